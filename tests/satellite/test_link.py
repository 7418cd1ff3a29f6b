"""The pass link model: loss statistics, aborts, determinism and the capacity curve."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from orbiter.satellite.contacts import Contact, synthetic_plan
from orbiter.satellite.link import GilbertElliott, LinkConfig, LinkModel, PassLink

HOUR = Contact(0.0, 3600.0, "sat-0", "ground", 50e6, 1e6)
PASS = Contact(1000.0, 1480.0, "sat-0", "ground", 50e6, 1e6)  # the §5.2 8-minute pass


def mean_burst(lost: np.ndarray, gmin: int = 4) -> float:
    """Mean length (in frames) of the burst a lost frame belongs to. A burst, as RFC 3611
    counts it, runs from a loss to the last loss before ``gmin`` or more frames in a row get
    through. Weighting by losses asks "is a loss usually one of many?", which isolated
    good-state losses would otherwise drown out."""
    idx = np.flatnonzero(lost)
    breaks = np.flatnonzero(np.diff(idx) > gmin)
    firsts = np.concatenate([[idx[0]], idx[breaks + 1]])
    lasts = np.concatenate([idx[breaks], [idx[-1]]])
    losses = np.diff(np.concatenate([[0], breaks + 1, [len(idx)]]))
    return float(((lasts - firsts + 1) * losses).sum() / losses.sum())


def unaborted(model: LinkModel, n: int = 20) -> list[PassLink]:
    links = [model.open(c) for c in synthetic_plan(days=n / 6 + 1)][:n]
    return [pl for pl in links if not pl.aborted and pl.stall is None]


@pytest.mark.parametrize("fer", [0.003, 0.01, 0.03, 0.2])
def test_from_mean_hits_the_requested_stationary_loss(fer: float) -> None:
    ge = GilbertElliott.from_mean(fer, mean_burst_frames=20.0)
    assert ge.mean_loss == pytest.approx(fer, rel=1e-12)
    assert 1.0 / ge.p_bg == pytest.approx(20.0)
    assert GilbertElliott.bernoulli(fer).mean_loss == pytest.approx(fer)


def test_from_mean_rejects_what_cannot_be_reached() -> None:
    with pytest.raises(ValueError, match="between"):
        GilbertElliott.from_mean(0.001)  # below the good state's own loss
    with pytest.raises(ValueError, match="between"):
        GilbertElliott.from_mean(0.6)  # above the bad state's
    with pytest.raises(ValueError, match="impossible"):
        GilbertElliott.from_mean(0.45, mean_burst_frames=1.0)  # needs p_gb > 1
    with pytest.raises(ValueError, match="probability"):
        GilbertElliott(1.5, 0.1, 0.0, 0.5)


@pytest.mark.parametrize(
    "loss",
    [
        GilbertElliott.from_mean(0.01),
        GilbertElliott.from_mean(0.03, mean_burst_frames=200.0, loss_bad=0.6),
        GilbertElliott.bernoulli(0.01),
    ],
    ids=["bursty-1%", "long-bursts-3%", "bernoulli-1%"],
)
def test_lost_fraction_over_a_long_pass_matches_the_chain(loss: GilbertElliott) -> None:
    model = LinkModel(LinkConfig(loss=loss, abort_probability=0.0), seed=7)
    pl = model.open(HOUR)
    for k in range(360):  # the simulator's way: many small consecutive intervals
        pl.capacity("down", 10.0 * k, 10.0 * (k + 1))
    measured = pl.lost_fraction("down")
    assert measured == pytest.approx(loss.mean_loss, rel=0.10), measured
    sent = pl.open_time(HOUR.end) * 50e6 / 8
    assert pl.delivered("down", HOUR.end) == pytest.approx(sent * (1 - measured), abs=1024)


def test_losses_come_in_bursts() -> None:
    rng = np.random.default_rng(3)
    bursty = GilbertElliott.from_mean(0.01).frames(2_000_000, rng)
    independent = GilbertElliott.bernoulli(0.01).frames(2_000_000, rng)
    assert bursty.mean() == pytest.approx(0.01, rel=0.10)
    assert independent.mean() == pytest.approx(0.01, rel=0.05)
    # Measured with this seed: about 15 frames with 20-frame bad periods, about 1.2 for Bernoulli.
    assert mean_burst(bursty) > 5.0
    assert mean_burst(independent) < 1.5


def test_the_links_own_losses_cluster_in_bursts() -> None:
    """On the path the simulator and the proxy use (``capacity``), not the per-frame model:
    the same mean loss, but bursts make some short intervals lose much more than others."""

    def per_interval_loss(loss: GilbertElliott) -> np.ndarray:
        pl = LinkModel(LinkConfig(loss=loss, abort_probability=0.0), seed=11).open(HOUR)
        step = 0.02  # about 122 link frames of 1 KiB at 50 Mbit/s
        full = 50e6 / 8 * step
        start = pl.usable_from
        got = [pl.capacity("down", start + step * k, start + step * (k + 1)) for k in range(50_000)]
        return 1 - np.asarray(got) / full

    bursty = per_interval_loss(GilbertElliott.from_mean(0.01))
    independent = per_interval_loss(GilbertElliott.bernoulli(0.01))
    assert bursty.mean() == pytest.approx(independent.mean(), rel=0.25)
    # Independent losses are spread evenly over the frames (measured std ~3e-7); bursts
    # make intervals differ (std ~0.03 with this seed). A chain that ignored its bad
    # state would look like the first.
    assert bursty.std() > 0.01 > 100 * independent.std()


def test_about_five_percent_of_passes_abort_at_a_uniform_time() -> None:
    model = LinkModel(LinkConfig.baseline(), seed=11)
    plan = synthetic_plan(days=340)
    links = [model.open(c) for c in list(plan)[:2000]]
    aborted = [pl for pl in links if pl.aborted]
    assert 0.035 < len(aborted) / len(links) < 0.065
    where = [(pl.ends_at - pl.usable_from) / (pl.contact.end - pl.usable_from) for pl in aborted]
    assert 0.4 < float(np.mean(where)) < 0.6  # uniform after acquisition: mean 1/2
    for pl in links:
        assert pl.usable_from == pl.contact.start + 60.0
        assert pl.ends_at == pl.contact.end or pl.aborted


def test_the_same_seed_gives_the_same_pass_whatever_the_order() -> None:
    contacts = list(synthetic_plan(days=3))
    a, b = LinkModel(LinkConfig.pessimistic(), seed=5), LinkModel(LinkConfig.pessimistic(), seed=5)
    forward = [a.open(c) for c in contacts]
    backward = [b.open(c) for c in reversed(contacts)][::-1]
    for x, y in zip(forward, backward, strict=True):
        assert (x.ends_at, x.aborted, x.stall) == (y.ends_at, y.aborted, y.stall)
        # Different query patterns must not change the realisation either.
        whole = x.capacity("down", x.contact.start, x.contact.end)
        pieces = sum(
            y.capacity("down", t, t + 7.0)
            for t in np.arange(y.contact.start, y.contact.end, 7.0)
            if t < y.contact.end
        )
        assert abs(whole - pieces) <= 1024
    other = [LinkModel(LinkConfig.pessimistic(), seed=6).open(c) for c in contacts]
    assert [x.ends_at for x in other] != [x.ends_at for x in forward]


def test_capacity_is_additive_over_adjacent_intervals() -> None:
    pl = LinkModel(LinkConfig(stall_probability=1.0, abort_probability=0.0), seed=2).open(PASS)
    assert pl.stall is not None
    rnd = random.Random(1)
    cuts = sorted(rnd.uniform(PASS.start - 10, PASS.end + 10) for _ in range(200))
    for direction in ("down", "up"):
        fresh = LinkModel(LinkConfig(stall_probability=1.0, abort_probability=0.0), seed=2)
        whole = fresh.open(PASS).capacity(direction, cuts[0], cuts[-1])
        parts = [pl.capacity(direction, t0, t1) for t0, t1 in itertools.pairwise(cuts)]
        assert min(parts) >= 0
        assert abs(sum(parts) - whole) <= 1024  # one frame


def test_a_whole_baseline_pass_delivers_its_rate_less_acquisition_and_loss() -> None:
    links = unaborted(LinkModel(LinkConfig.baseline(), seed=1))
    assert len(links) >= 10
    for pl in links:
        nominal = 50e6 * (PASS.duration - 60.0) / 8
        got = pl.capacity("down", pl.contact.start, pl.contact.end)
        assert 0.98 * nominal * (1 - 0.01) <= got <= nominal
        assert got == pytest.approx(pl.usable_bytes("down"), rel=0.01)
        up = pl.capacity("up", pl.contact.start, pl.contact.end)
        assert up <= 1e6 * (PASS.duration - 60.0) / 8
        assert up == pytest.approx(pl.usable_bytes("up"), rel=0.02)


def test_the_pessimistic_link_delivers_far_less() -> None:
    plan = list(synthetic_plan(days=20))
    base = LinkModel(LinkConfig.baseline(), seed=4)
    bad = LinkModel(LinkConfig.pessimistic(), seed=4)
    b = sum(base.open(c).capacity("down", c.start, c.end) for c in plan)
    p = sum(bad.open(c).capacity("down", c.start, c.end) for c in plan)
    # Expected ratio ≈ 0.58: acquisition 330/420 x aborts 0.9 x stalls 0.85 x (1 - 3 %).
    assert p < 0.7 * b
    assert p > 0.4 * b


def test_no_data_outside_the_window_or_during_a_stall() -> None:
    cfg = LinkConfig(stall_probability=1.0, stall_s=30.0, abort_probability=0.0)
    pl = LinkModel(cfg, seed=9).open(PASS)
    assert pl.stall is not None
    s0, s1 = pl.stall
    assert s1 - s0 == pytest.approx(30.0)
    assert pl.usable_from <= s0 and s1 <= pl.ends_at
    assert not pl.is_open(PASS.start + 59.0) and pl.is_open(PASS.start + 60.0)
    assert not pl.is_open((s0 + s1) / 2) and not pl.is_open(PASS.end)
    assert pl.capacity("down", PASS.start - 100, pl.usable_from) == 0
    assert pl.capacity("down", s0, s1) == 0
    assert pl.capacity("down", PASS.end, PASS.end + 100) == 0
    assert pl.open_time(PASS.end) == pytest.approx(PASS.duration - 60.0 - 30.0)


def test_rates_come_from_the_config_or_the_contact() -> None:
    own = LinkModel(LinkConfig(), seed=0).open(PASS)
    assert (own.rate("down"), own.rate("up")) == (50e6, 1e6)
    fixed = LinkModel(LinkConfig(rate_down=4e6, rate_up=5e5), seed=0).open(PASS)
    assert (fixed.rate("down"), fixed.rate("up")) == (4e6, 5e5)
    with pytest.raises(ValueError, match="direction"):
        fixed.rate("sideways")  # type: ignore[arg-type]
    short = Contact(0.0, 30.0, "s", "g", 1e6, 1e6)  # ends before acquisition completes
    pl = LinkModel(LinkConfig(), seed=0).open(short)
    assert pl.usable_from == 30.0 and pl.capacity("down", 0.0, 30.0) == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"acquisition_s": -1.0},
        {"rate_down": -5.0},
        {"frame_bytes": 0},
        {"abort_probability": 1.5},
        {"stall_probability": -0.1},
        {"stall_s": -1.0},
    ],
)
def test_config_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LinkConfig(**kwargs)  # type: ignore[arg-type]
