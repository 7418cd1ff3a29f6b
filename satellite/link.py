"""The radio link over one contact: what actually gets through, and when.

A contact window is not a pipe of ``rate x duration`` bytes. BUPT-1's logs (satellite.md §1.4)
show 1-2.5 min of each pass spent acquiring lock, LDPC frame errors of 0.3-1.2 % that come in
bursts, mid-pass stalls and passes that end early. This module turns a ``Contact`` into a
``PassLink`` that answers one question fast, "how many bytes get through in [t0, t1)?", so that
the discrete-event simulator (virtual clock) and the real-socket proxy (``proxy.py``, wall
clock) apply the same rules and see the same pass for the same seed.

Losses are a Gilbert-Elliott chain over link-layer frames. It is never run per frame: sojourns
are drawn as geometric lengths and each sojourn's losses as one binomial draw, in vectorised
batches, and the losses are spread evenly inside a sojourn when a query cuts through it. So the
delivered-bytes curve of a pass is one monotone function of time and capacities over adjacent
intervals add up exactly.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from orbiter.satellite.contacts import Contact

__all__ = ["DIRECTIONS", "Direction", "GilbertElliott", "LinkConfig", "LinkModel", "PassLink"]

Direction = Literal["down", "up"]
DIRECTIONS: tuple[Direction, ...] = ("down", "up")
# A sojourn whose leaving probability is 0 never ends; 2**40 frames outlasts any pass.
_NEVER = 1 << 40


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


@dataclass(frozen=True, slots=True)
class GilbertElliott:
    """Two-state loss chain: per-frame transition probabilities good→bad (``p_gb``) and
    bad→good (``p_bg``), and the frame-loss probability in each state."""

    p_gb: float
    p_bg: float
    loss_good: float
    loss_bad: float

    def __post_init__(self) -> None:
        for name in ("p_gb", "p_bg", "loss_good", "loss_bad"):
            _check_probability(name, getattr(self, name))

    @property
    def bad_share(self) -> float:
        """Stationary probability of the bad state (0 if the chain never leaves good)."""
        total = self.p_gb + self.p_bg
        return self.p_gb / total if total > 0 else 0.0

    @property
    def mean_loss(self) -> float:
        """Stationary frame-loss probability."""
        b = self.bad_share
        return (1.0 - b) * self.loss_good + b * self.loss_bad

    @classmethod
    def from_mean(
        cls,
        fer: float = 0.01,
        *,
        mean_burst_frames: float = 20.0,
        loss_good: float = 0.003,
        loss_bad: float = 0.5,
    ) -> GilbertElliott:
        """The chain with stationary loss ``fer`` whose bad periods last ``mean_burst_frames``
        frames on average. Defaults: the good state loses as BUPT-1's main-lobe pass did
        (0.3 %, satellite.md §1.4), the bad state loses half its frames."""
        _check_probability("fer", fer)
        if mean_burst_frames < 1.0:
            raise ValueError(f"mean_burst_frames must be at least 1, got {mean_burst_frames!r}")
        if not loss_good <= fer <= loss_bad:
            raise ValueError(
                f"fer {fer!r} cannot be reached with loss_good {loss_good!r} and "
                f"loss_bad {loss_bad!r}: it must lie between them"
            )
        if loss_good == loss_bad:
            return cls(0.0, 1.0, loss_good, loss_bad)
        bad = (fer - loss_good) / (loss_bad - loss_good)
        p_bg = 1.0 / mean_burst_frames
        if bad >= 1.0:
            return cls(1.0, 0.0, loss_good, loss_bad)
        p_gb = bad * p_bg / (1.0 - bad)
        if p_gb > 1.0:
            raise ValueError(
                f"fer {fer!r} needs the bad state {bad:.0%} of the time, impossible with bursts "
                f"of {mean_burst_frames!r} frames; use longer bursts or a higher loss_bad"
            )
        return cls(p_gb, p_bg, loss_good, loss_bad)

    @classmethod
    def bernoulli(cls, fer: float) -> GilbertElliott:
        """Independent frame losses (a chain that stays good)."""
        return cls(0.0, 1.0, fer, fer)

    def sojourns(
        self, rng: np.random.Generator, first_bad: bool, count: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``count`` consecutive sojourns starting in the given state: (bad flags, lengths in
        frames). States alternate; lengths are geometric in the leaving probability."""
        bad = (np.arange(count) % 2 == 1) ^ first_bad
        leave = np.where(bad, self.p_bg, self.p_gb)
        lengths = rng.geometric(np.where(leave > 0, leave, 1.0)).astype(np.int64)
        return bad, np.where(leave > 0, np.minimum(lengths, _NEVER), _NEVER)

    def frames(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """A per-frame loss mask of ``n`` frames from the stationary chain (for analysis and
        tests; the link itself never works per frame)."""
        first_bad = bool(rng.random() < self.bad_share)
        bad_parts: list[np.ndarray] = []
        len_parts: list[np.ndarray] = []
        covered = 0
        while covered < n:
            bad, lengths = self.sojourns(rng, first_bad, 256)
            bad_parts.append(bad)
            len_parts.append(lengths)
            covered += int(np.minimum(lengths, n).sum())
            first_bad = not bool(bad[-1])
        state = np.repeat(np.concatenate(bad_parts), np.minimum(np.concatenate(len_parts), n))[:n]
        return rng.random(n) < np.where(state, self.loss_bad, self.loss_good)


_DEFAULT_LOSS = GilbertElliott.from_mean(0.01)  # satellite.md §5.2: FER 1 % in bursts


@dataclass(frozen=True, slots=True)
class LinkConfig:
    """How a contact behaves as a link. Rates are bits/s; ``None`` takes the contact's."""

    acquisition_s: float = 60.0
    rate_down: float | None = None
    rate_up: float | None = None
    frame_bytes: int = 1024
    loss: GilbertElliott = _DEFAULT_LOSS
    uplink_loss: GilbertElliott | None = None
    abort_probability: float = 0.05
    stall_probability: float = 0.0
    stall_s: float = 30.0
    propagation_s: float = 0.005

    def __post_init__(self) -> None:
        if self.acquisition_s < 0:
            raise ValueError(f"acquisition_s must not be negative, got {self.acquisition_s!r}")
        for name in ("rate_down", "rate_up"):
            rate = getattr(self, name)
            if rate is not None and not rate >= 0:
                raise ValueError(f"{name} must be None or a rate >= 0 bits/s, got {rate!r}")
        if self.frame_bytes < 1:
            raise ValueError(f"frame_bytes must be at least 1, got {self.frame_bytes!r}")
        _check_probability("abort_probability", self.abort_probability)
        _check_probability("stall_probability", self.stall_probability)
        if self.stall_s < 0 or self.propagation_s < 0:
            raise ValueError("stall_s and propagation_s must not be negative")

    def loss_for(self, direction: Direction) -> GilbertElliott:
        if direction == "up" and self.uplink_loss is not None:
            return self.uplink_loss
        return self.loss

    @classmethod
    def baseline(cls) -> LinkConfig:
        """satellite.md §5.2: 50 Mbit/s down, 1 Mbit/s up, 60 s acquisition (§3.3), FER 1 %
        in Gilbert-Elliott bursts (§1.4: 0.3 % main lobe, 1.2 % side lobe), 5 % of passes
        aborted, 1.7-7 ms one-way propagation (§2.5)."""
        return cls(
            acquisition_s=60.0,
            rate_down=50e6,
            rate_up=1e6,
            loss=GilbertElliott.from_mean(0.01),
            abort_probability=0.05,
            propagation_s=0.005,
        )

    @classmethod
    def pessimistic(cls) -> LinkConfig:
        """A bad day, from SatLink T3 (satellite.md §1.4): lock took 150 s (§3.3: 60-150 s
        measured), FER 3 % (2.5x the 1.2 % side-lobe pass) in long bursts, 20 % of passes
        aborted, and half the passes stall for 2 min (T3 carried data in only 31 of 302 s).
        The abort/stall shares are *inference*, sized to reproduce T3's goodput collapse."""
        return cls(
            acquisition_s=150.0,
            rate_down=50e6,
            rate_up=1e6,
            loss=GilbertElliott.from_mean(0.03, mean_burst_frames=200.0, loss_bad=0.6),
            abort_probability=0.2,
            stall_probability=0.5,
            stall_s=120.0,
            propagation_s=0.007,
        )


class _Chain:
    """The loss chain of one direction of one pass, drawn forward in batches and kept.

    ``starts[i]`` is the first frame of sojourn ``i`` (the last entry is the frontier) and
    ``lost_before[i]`` the frames lost before it; losses inside a sojourn are spread evenly.
    Plain lists: a query is one ``bisect``, far cheaper than a numpy call on a scalar."""

    __slots__ = ("_first_bad", "_hint", "_lost", "_model", "_rng", "lost_before", "starts")

    def __init__(self, model: GilbertElliott, rng: np.random.Generator) -> None:
        self._model = model
        self._rng = rng
        self._first_bad = bool(rng.random() < model.bad_share)
        self.starts: list[int] = [0]
        self.lost_before: list[int] = [0]
        self._lost: list[int] = []
        self._hint = 0

    def _extend(self, frames: float) -> None:
        m = self._model
        while self.starts[-1] <= frames:
            # Batch sizes double on a fixed schedule: how far the queries reach must not change
            # which random numbers go where (same seed, same pass), and extending stays cheap.
            count = max(64, len(self._lost))
            bad, lengths = m.sojourns(self._rng, self._first_bad, count)
            lost = self._rng.binomial(lengths, np.where(bad, m.loss_bad, m.loss_good))
            self._first_bad = not bool(bad[-1])
            self._lost.extend(lost.tolist())
            self.starts.extend((self.starts[-1] + np.cumsum(lengths)).tolist())
            self.lost_before.extend((self.lost_before[-1] + np.cumsum(lost)).tolist())

    def lost(self, frames: float) -> float:
        """Frames lost among the first ``frames`` (fractional: losses spread in a sojourn)."""
        if frames <= 0:
            return 0.0
        self._extend(frames)
        starts = self.starts
        i = self._hint  # queries mostly move forward a little: try the last sojourn first
        if not starts[i] <= frames < starts[i + 1]:
            i = self._hint = bisect.bisect_right(starts, frames) - 1
        start = starts[i]
        return self.lost_before[i] + self._lost[i] * (frames - start) / (starts[i + 1] - start)


class PassLink:
    """One pass as a link: when it is usable and how many bytes each direction delivers."""

    def __init__(self, contact: Contact, config: LinkConfig, seed: bytes) -> None:
        self.contact = contact
        self.config = config
        self.propagation_s = config.propagation_s
        self._seed = seed
        rng = np.random.default_rng(np.frombuffer(seed + b"pass", dtype=np.uint32))
        self.usable_from = min(contact.start + config.acquisition_s, contact.end)
        u_abort, u_when, u_stall, u_stall_at = rng.random(4).tolist()
        self.aborted = bool(u_abort < config.abort_probability) and self.usable_from < contact.end
        self.ends_at = (
            self.usable_from + u_when * (contact.end - self.usable_from)
            if self.aborted
            else contact.end
        )
        self.stall: tuple[float, float] | None = None
        if u_stall < config.stall_probability and config.stall_s > 0:
            room = max(0.0, self.ends_at - self.usable_from - config.stall_s)
            begin = self.usable_from + u_stall_at * room
            end = min(begin + config.stall_s, self.ends_at)
            if end > begin:
                self.stall = (begin, end)
        self._chains: dict[Direction, _Chain] = {}
        self._frontier: dict[Direction, float] = {}
        self._last: dict[Direction, tuple[float, int]] = {}

    def __repr__(self) -> str:
        return (
            f"PassLink({self.contact.satellite}->{self.contact.station} "
            f"usable {self.usable_from:.1f}..{self.ends_at:.1f}, aborted={self.aborted}, "
            f"stall={self.stall})"
        )

    def is_open(self, t: float) -> bool:
        if not self.usable_from <= t < self.ends_at:
            return False
        return self.stall is None or not self.stall[0] <= t < self.stall[1]

    def rate(self, direction: Direction) -> float:
        """Nominal rate in bits/s."""
        if direction == "down":
            cfg = self.config.rate_down
            return self.contact.rate_down if cfg is None else cfg
        if direction == "up":
            cfg = self.config.rate_up
            return self.contact.rate_up if cfg is None else cfg
        raise ValueError(f"direction must be 'down' or 'up', got {direction!r}")

    def open_time(self, t: float) -> float:
        """Seconds of open link in [usable_from, t)."""
        end = min(t, self.ends_at)
        if end <= self.usable_from:
            return 0.0
        total = end - self.usable_from
        if self.stall is not None:
            total -= max(0.0, min(end, self.stall[1]) - self.stall[0])
        return total

    def _chain(self, direction: Direction) -> _Chain:
        chain = self._chains.get(direction)
        if chain is None:
            tag = direction.encode()
            rng = np.random.default_rng(np.frombuffer(self._seed + tag.ljust(4), dtype=np.uint32))
            chain = self._chains[direction] = _Chain(self.config.loss_for(direction), rng)
        return chain

    def _frames(self, direction: Direction, t: float) -> float:
        return self.open_time(t) * self.rate(direction) / (8.0 * self.config.frame_bytes)

    def delivered(self, direction: Direction, t: float) -> int:
        """Bytes delivered in [usable_from, t): the cumulative curve ``capacity`` differences."""
        last = self._last.get(direction)
        if last is not None and last[0] == t:
            return last[1]  # consecutive intervals share an end: one lookup per call
        frames = self._frames(direction, t)
        value = 0
        if frames > 0:
            lost = self._chain(direction).lost(frames)
            self._frontier[direction] = max(self._frontier.get(direction, 0.0), frames)
            value = math.floor((frames - lost) * self.config.frame_bytes)
        self._last[direction] = (t, value)
        return value

    def capacity(self, direction: Direction, t0: float, t1: float) -> int:
        """Bytes that get through in [t0, t1)."""
        if t1 <= t0:
            return 0
        # t0 first: it is the previous call's t1, which ``delivered`` remembers.
        start = self.delivered(direction, t0)
        return self.delivered(direction, t1) - start

    def lost_fraction(self, direction: Direction) -> float:
        """Share of the frames sent so far (up to the latest query) that were lost."""
        frames = self._frontier.get(direction, 0.0)
        return self._chain(direction).lost(frames) / frames if frames > 0 else 0.0

    def usable_bytes(self, direction: Direction) -> int:
        """Expected bytes over the whole pass (this pass's windows, the chain's mean loss)."""
        loss = self.config.loss_for(direction).mean_loss
        return math.floor(self.open_time(self.ends_at) * self.rate(direction) / 8 * (1 - loss))


class LinkModel:
    """Makes the ``PassLink`` of each contact; the same (seed, contact) always gives the same
    pass, whatever else was opened before."""

    def __init__(self, config: LinkConfig | None = None, *, seed: int = 0) -> None:
        self.config = LinkConfig() if config is None else config
        self.seed = seed

    def open(self, contact: Contact) -> PassLink:
        key = f"{self.seed}|{contact.satellite}|{contact.station}|{contact.start!r}"
        return PassLink(
            contact, self.config, hashlib.blake2b(key.encode(), digest_size=16).digest()
        )
