"""Orbits and the contact windows they give, computed offline with ``sgp4`` alone.

The simulator and the hubs only need a ``ContactPlan``; this module is where such a plan comes
from when it is not synthetic. ``sgp4`` is the only dependency (no ephemeris or Earth-orientation
downloads), following the verified recipe of satellite.md §3.2: SGP4 in TEME, rotated to an
Earth-fixed frame by GMST (polar motion and UT1-UTC ignored, sub-kilometre error), elevation
scanned on a fixed grid and each mask crossing refined by bisection. Orbits are built from
elements (synthetic sun-synchronous or Walker constellations) or parsed from TLE files, and
export back to TLEs so fixtures stay human-readable.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from numpy.typing import NDArray
from sgp4.api import WGS72, Satrec, jday  # type: ignore[import-untyped]
from sgp4.exporter import export_tle  # type: ignore[import-untyped]
from sgp4.io import compute_checksum  # type: ignore[import-untyped]

from .contacts import DAY, Contact, ContactPlan

__all__ = [
    "EARTH_RADIUS_KM",
    "GroundStation",
    "Orbit",
    "compute_contacts",
    "eclipse_fraction",
    "parse_tles",
    "sso_inclination",
    "sun_synchronous",
    "sunlit",
    "walker",
]

FloatArray = NDArray[np.float64]

MU = 398600.4418  # km^3/s^2
EARTH_RADIUS_KM = 6378.137  # WGS84 equatorial radius
_WGS84_F = 1 / 298.257223563
_J2 = 1.08263e-3
_TROPICAL_YEAR_S = 365.2422 * DAY
_UNIX_EPOCH_JD = 2440587.5
_SGP4_EPOCH_JD = 2433281.5  # sgp4init counts days from 1949 December 31 00:00 UT
_REFINE_S = 0.05  # bisection stops below this bracket, so edges are good to < 0.1 s


@dataclass(frozen=True, slots=True)
class GroundStation:
    name: str
    latitude_deg: float
    longitude_deg: float
    altitude_m: float = 0.0
    elevation_mask_deg: float = 5.0
    rate_down: float = 50e6  # bits/s
    rate_up: float = 1e6  # bits/s

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("ground station needs a name")
        if not -90.0 <= self.latitude_deg <= 90.0:
            raise ValueError(f"{self.name}: latitude {self.latitude_deg} is not in [-90, 90]")
        if not -180.0 <= self.longitude_deg <= 360.0:
            raise ValueError(f"{self.name}: longitude {self.longitude_deg} is not in [-180, 360]")
        if not -500.0 <= self.altitude_m <= 9000.0:
            raise ValueError(f"{self.name}: altitude {self.altitude_m} m is not on Earth")
        if not 0.0 <= self.elevation_mask_deg < 90.0:
            raise ValueError(f"{self.name}: elevation mask must be in [0, 90) degrees")
        if self.rate_down < 0 or self.rate_up < 0:
            raise ValueError(f"{self.name}: rates must not be negative")

    def ecef(self) -> tuple[FloatArray, FloatArray]:
        """Position (km, WGS84 geodetic) and the unit normal of the local horizon."""
        lat, lon = math.radians(self.latitude_deg), math.radians(self.longitude_deg)
        e2 = _WGS84_F * (2 - _WGS84_F)
        n = EARTH_RADIUS_KM / math.sqrt(1 - e2 * math.sin(lat) ** 2)
        h = self.altitude_m / 1000.0
        pos = np.array(
            [
                (n + h) * math.cos(lat) * math.cos(lon),
                (n + h) * math.cos(lat) * math.sin(lon),
                (n * (1 - e2) + h) * math.sin(lat),
            ]
        )
        up = np.array([math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat)])
        return pos, up


def sso_inclination(altitude_km: float) -> float:
    """Inclination (degrees) at which J2 precesses a circular orbit's node once a year."""
    if altitude_km <= 0:
        raise ValueError("altitude must be positive")
    a = EARTH_RADIUS_KM + altitude_km
    n = math.sqrt(MU / a**3)
    cos_i = -(2 * math.pi / _TROPICAL_YEAR_S) / (1.5 * n * _J2 * (EARTH_RADIUS_KM / a) ** 2)
    if cos_i < -1:
        raise ValueError(f"no sun-synchronous orbit exists at {altitude_km} km")
    return math.degrees(math.acos(cos_i))


def _unix(t: datetime) -> float:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"datetime {t.isoformat()} must be timezone-aware (UTC)")
    return t.timestamp()


def _jd(times: FloatArray) -> tuple[FloatArray, FloatArray]:
    # Whole days and the fraction kept apart so sub-second resolution survives float64.
    days = np.floor(times / DAY)
    return _UNIX_EPOCH_JD + days, (times - days * DAY) / DAY


def _gmst(jd: FloatArray, fr: FloatArray) -> FloatArray:
    """IAU-82 Greenwich mean sidereal time (radians), UTC taken as UT1."""
    t = ((jd - 2451545.0) + fr) / 36525.0
    sec = 67310.54841 + (876600 * 3600 + 8640184.812866) * t + 0.093104 * t**2 - 6.2e-6 * t**3
    return np.radians(np.mod(sec, DAY) / 240.0)


class Orbit:
    """A named SGP4 orbit. Times are Unix seconds (UTC); positions are in km."""

    __slots__ = ("name", "satrec")

    def __init__(self, name: str, satrec: Satrec) -> None:
        if not name:
            raise ValueError("orbit needs a name")
        self.name = name
        self.satrec = satrec

    def __repr__(self) -> str:
        return (
            f"Orbit({self.name!r}, i={self.inclination_deg:.2f}°, "
            f"raan={self.raan_deg:.2f}°, period={self.period / 60:.1f} min)"
        )

    @classmethod
    def from_tle(cls, name: str, line1: str, line2: str) -> Orbit:
        return cls(name, _satrec_from_tle(line1, line2, 1))

    @classmethod
    def from_elements(
        cls,
        name: str,
        *,
        altitude_km: float,
        epoch: datetime,
        inclination_deg: float | None = None,
        raan_deg: float = 0.0,
        mean_anomaly_deg: float = 0.0,
        eccentricity: float = 1e-4,
        satnum: int = 99999,
    ) -> Orbit:
        """A near-circular orbit; ``inclination_deg=None`` makes it sun-synchronous."""
        if altitude_km < 100:
            raise ValueError(f"{name}: altitude {altitude_km} km is below any usable orbit")
        if not 0 <= eccentricity < 1:
            raise ValueError(f"{name}: eccentricity must be in [0, 1)")
        inc = sso_inclination(altitude_km) if inclination_deg is None else inclination_deg
        if not 0 <= inc <= 180:
            raise ValueError(f"{name}: inclination must be in [0, 180] degrees")
        if epoch.tzinfo is None or epoch.utcoffset() is None:
            raise ValueError(f"{name}: epoch must be timezone-aware (UTC)")
        utc = epoch - (epoch.utcoffset() or timedelta(0))
        jd, fr = jday(
            utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second + utc.microsecond / 1e6
        )
        # Keplerian mean motion, as in the verified recipe (rad/min).
        n = math.sqrt(MU / (EARTH_RADIUS_KM + altitude_km) ** 3) * 60
        sat = Satrec()
        sat.sgp4init(
            WGS72,
            "i",
            satnum,
            jd + fr - _SGP4_EPOCH_JD,
            0.0,
            0.0,
            0.0,
            eccentricity,
            0.0,
            math.radians(inc),
            math.radians(mean_anomaly_deg % 360.0),
            n,
            math.radians(raan_deg % 360.0),
        )
        return cls(name, sat)

    @property
    def inclination_deg(self) -> float:
        return math.degrees(float(self.satrec.inclo))

    @property
    def raan_deg(self) -> float:
        return math.degrees(float(self.satrec.nodeo))

    @property
    def mean_anomaly_deg(self) -> float:
        return math.degrees(float(self.satrec.mo))

    @property
    def period(self) -> float:
        """Nodal period in seconds (from the SGP4 mean motion)."""
        return 2 * math.pi / float(self.satrec.no_kozai) * 60.0

    def tle(self) -> tuple[str, str]:
        line1, line2 = export_tle(self.satrec)
        return str(line1), str(line2)

    def _teme(self, times: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        jd, fr = _jd(np.asarray(times, dtype=np.float64))
        err, r, _v = self.satrec.sgp4_array(jd, fr)
        if np.any(err):
            code = int(err[np.nonzero(err)[0][0]])
            raise RuntimeError(f"{self.name}: SGP4 failed with error {code} (decayed orbit?)")
        return np.asarray(r, dtype=np.float64), jd, fr

    def positions_ecef(self, times: FloatArray) -> FloatArray:
        """Earth-fixed positions (km), shape ``(len(times), 3)``."""
        r, jd, fr = self._teme(times)
        theta = _gmst(jd, fr)
        c, s = np.cos(theta), np.sin(theta)
        return np.column_stack([c * r[:, 0] + s * r[:, 1], -s * r[:, 0] + c * r[:, 1], r[:, 2]])

    def position_ecef(self, unix_seconds: float) -> FloatArray:
        return np.asarray(
            self.positions_ecef(np.array([unix_seconds], dtype=np.float64))[0], dtype=np.float64
        )


def _satrec_from_tle(line1: str, line2: str, lineno: int) -> Satrec:
    """Validate what ``twoline2rv`` silently accepts; ``lineno`` is line 1's number."""
    for offset, (line, tag) in enumerate(((line1, "1"), (line2, "2"))):
        where = f"line {lineno + offset}"
        text = line.rstrip()
        if not text.startswith(tag + " "):
            raise ValueError(f"{where}: expected TLE line {tag}, got {text[:20]!r}")
        if len(text) != 69:
            raise ValueError(f"{where}: TLE line must be 69 characters, got {len(text)}")
        if not text[68].isdigit() or int(text[68]) != compute_checksum(text):
            raise ValueError(
                f"{where}: checksum {text[68]!r} does not match {compute_checksum(text)}"
            )
        fields = [(18, 32)] if tag == "1" else [(8, 16), (17, 25), (34, 42), (43, 51), (52, 63)]
        for a, b in fields:
            try:
                float(text[a:b])
            except ValueError:
                raise ValueError(
                    f"{where}: columns {a + 1}-{b}: {text[a:b]!r} is not a number"
                ) from None
        if tag == "2" and not text[26:33].strip().isdigit():
            raise ValueError(f"{where}: eccentricity {text[26:33]!r} is not a number")
    if line1[2:7] != line2[2:7]:
        raise ValueError(
            f"line {lineno + 1}: satellite number {line2[2:7]!r} does not match {line1[2:7]!r}"
        )
    return Satrec.twoline2rv(line1.rstrip(), line2.rstrip())


def parse_tles(text: str) -> list[Orbit]:
    """Orbits from a 2-line or 3-line (name line first) TLE file; blank lines are ignored."""
    lines = [(i, ln.rstrip()) for i, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    orbits: list[Orbit] = []
    k = 0
    while k < len(lines):
        lineno, line = lines[k]
        name: str | None = None
        if not line.startswith("1 "):
            if line.startswith("2 "):
                raise ValueError(f"line {lineno}: TLE line 2 without a line 1 before it")
            # 3LE files from CelesTrak prefix the name with "0 ".
            name = line[2:].strip() if line.startswith("0 ") else line.strip()
            k += 1
            if k >= len(lines):
                raise ValueError(f"line {lineno}: name {name!r} is not followed by a TLE")
            lineno, line = lines[k]
        if k + 1 >= len(lines):
            raise ValueError(f"line {lineno}: TLE line 1 is not followed by line 2")
        line2 = lines[k + 1][1]
        if lines[k + 1][0] != lineno + 1:
            raise ValueError(f"line {lines[k + 1][0]}: blank line inside a TLE")
        satrec = _satrec_from_tle(line, line2, lineno)
        orbits.append(Orbit(name or line[2:7].strip(), satrec))
        k += 2
    return orbits


def sun_synchronous(name: str, altitude_km: float, raan_deg: float, epoch: datetime) -> Orbit:
    return Orbit.from_elements(name, altitude_km=altitude_km, raan_deg=raan_deg, epoch=epoch)


def walker(
    prefix: str,
    *,
    total: int,
    planes: int,
    phasing: int,
    altitude_km: float,
    inclination_deg: float | None,
    epoch: datetime,
) -> list[Orbit]:
    """Walker delta ``i: total/planes/phasing``: planes spread over 360° of RAAN, satellites
    evenly in each plane, and plane ``j`` shifted by ``j * phasing * 360 / total`` degrees."""
    if planes < 1 or total < 1 or total % planes:
        raise ValueError(f"total ({total}) must be a positive multiple of planes ({planes})")
    if not 0 <= phasing < planes:
        raise ValueError(f"phasing must be in [0, {planes - 1}]")
    per_plane = total // planes
    orbits = []
    for j in range(planes):
        for k in range(per_plane):
            orbits.append(
                Orbit.from_elements(
                    f"{prefix}-{j * per_plane + k}",
                    altitude_km=altitude_km,
                    inclination_deg=inclination_deg,
                    raan_deg=j * 360.0 / planes,
                    mean_anomaly_deg=k * 360.0 / per_plane + j * phasing * 360.0 / total,
                    epoch=epoch,
                )
            )
    return orbits


def _elevation(pos: FloatArray, station: tuple[FloatArray, FloatArray]) -> FloatArray:
    gs, up = station
    d = pos - gs
    return np.asarray(np.degrees(np.arcsin((d @ up) / np.linalg.norm(d, axis=1))), np.float64)


def _refine(
    orbit: Orbit,
    station: GroundStation,
    lo: FloatArray,
    hi: FloatArray,
    lo_above: NDArray[np.bool_],
    step: float,
) -> FloatArray:
    """Bisect every bracketed mask crossing at once (``lo_above``: the state at ``lo``)."""
    geo = station.ecef()
    mask = station.elevation_mask_deg
    for _ in range(max(1, math.ceil(math.log2(step / _REFINE_S)))):
        mid = (lo + hi) / 2
        same = (_elevation(orbit.positions_ecef(mid), geo) >= mask) == lo_above
        lo = np.where(same, mid, lo)
        hi = np.where(same, hi, mid)
    return (lo + hi) / 2


def _passes(
    orbit: Orbit, station: GroundStation, t: FloatArray, pos: FloatArray, step: float
) -> list[Contact]:
    el = _elevation(pos, station.ecef())
    above = el >= station.elevation_mask_deg
    if not above.any():
        return []
    change = np.nonzero(above[:-1] != above[1:])[0]
    edges = _refine(orbit, station, t[change], t[change + 1], above[change], step)
    rises = [(float(e), int(i) + 1) for e, i in zip(edges, change, strict=True) if not above[i]]
    sets = [(float(e), int(i)) for e, i in zip(edges, change, strict=True) if above[i]]
    if above[0]:
        rises.insert(0, (float(t[0]), 0))  # pass in progress at the start: clipped
    if above[-1]:
        sets.append((float(t[-1]), len(t) - 1))  # still in progress at the end: clipped
    contacts = []
    for (start, i0), (end, i1) in zip(rises, sets, strict=True):
        if end <= start:
            continue
        k = i0 + int(np.argmax(el[i0 : i1 + 1]))
        peak = float(el[k])
        if 0 < k < len(el) - 1:  # parabola through the top three samples
            a, b, c = float(el[k - 1]), peak, float(el[k + 1])
            if a - 2 * b + c < 0:
                peak = b - (a - c) ** 2 / (8 * (a - 2 * b + c))
        contacts.append(
            Contact(start, end, orbit.name, station.name, station.rate_down, station.rate_up, peak)
        )
    return contacts


def compute_contacts(
    orbits: Iterable[Orbit],
    stations: Sequence[GroundStation],
    *,
    start: datetime,
    days: float,
    step: float = 10.0,
) -> ContactPlan:
    """Every pass of every orbit over every station above its mask, in Unix seconds.

    Passes shorter than about ``step`` can fall between two samples and be missed."""
    if days <= 0 or step <= 0:
        raise ValueError("days and step must be positive")
    t0 = _unix(start)
    t1 = t0 + days * DAY
    t = np.arange(t0, t1, step, dtype=np.float64)
    if t[-1] < t1:
        t = np.append(t, t1)
    contacts: list[Contact] = []
    for orbit in orbits:
        pos = orbit.positions_ecef(t)
        for station in stations:
            contacts.extend(_passes(orbit, station, t, pos, step))
    return ContactPlan(contacts)


def _sun_direction(jd: FloatArray, fr: FloatArray) -> FloatArray:
    """Unit vector to the Sun, mean equator and equinox of date (Astronomical Almanac low
    precision formula, about 0.01°); close enough to TEME for a shadow test."""
    n = (jd - 2451545.0) + fr
    g = np.radians(357.528 + 0.9856003 * n)
    lam = np.radians(280.460 + 0.9856474 * n + 1.915 * np.sin(g) + 0.020 * np.sin(2 * g))
    eps = np.radians(23.439 - 4e-7 * n)
    return np.column_stack([np.cos(lam), np.cos(eps) * np.sin(lam), np.sin(eps) * np.sin(lam)])


def _sunlit(orbit: Orbit, times: FloatArray) -> NDArray[np.bool_]:
    r, jd, fr = orbit._teme(times)
    sun = _sun_direction(jd, fr)
    along = np.sum(r * sun, axis=1)
    across = np.linalg.norm(r - along[:, None] * sun, axis=1)
    # Cylindrical shadow: behind the Earth and within one Earth radius of the Sun line.
    return np.asarray((along > 0) | (across > EARTH_RADIUS_KM))


def sunlit(orbit: Orbit, unix_seconds: float) -> bool:
    return bool(_sunlit(orbit, np.array([unix_seconds], dtype=np.float64))[0])


def eclipse_fraction(orbit: Orbit, start: datetime, days: float, step: float = 30.0) -> float:
    """Fraction of the time ``orbit`` spends in the Earth's (cylindrical) shadow."""
    if days <= 0 or step <= 0:
        raise ValueError("days and step must be positive")
    t0 = _unix(start)
    t = np.arange(t0, t0 + days * DAY, step, dtype=np.float64)
    return float(1.0 - np.mean(_sunlit(orbit, t)))
