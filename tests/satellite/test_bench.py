"""``bench/satellite.py`` as a user runs it, with tiny parameters: one JSON document on stdout
with the simulation and goodput figures, every number positive, and byte counts that add up
(the payload inside the envelopes, the envelopes inside the proxy's delivered bytes, nothing
above the configured rate, which the proxy enforces whatever the machine's speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[2] / "bench" / "satellite.py"
RUN_KEYS = {
    "satellites",
    "days",
    "simulated_s",
    "wall_s",
    "measure_s",
    "sim_days_per_s",
    "satellite_days_per_s",
    "envelopes",
    "envelopes_per_s",
    "bytes_down",
    "vs_realtime",
    "ok",
}
RATE_FRACTIONS = ("link_fraction", "goodput_fraction", "payload_fraction")


def _positive(data: dict[str, Any], keys: set[str]) -> None:
    for key in keys:
        value = data[key]
        assert isinstance(value, int | float) and value > 0, (key, value)


def test_the_bench_prints_its_figures_as_json() -> None:
    argv = [sys.executable, str(BENCH), "--quick", "--days", "0.2", "--satellites", "2"]
    argv += ["--goodput-seconds", "2", "--backlog-mb", "4"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=40, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert set(result) == {"simulation", "goodput", "machine"}
    assert result["machine"]["cpus"] >= 1

    sim = result["simulation"]
    assert set(sim) == {"single", "constellation", "scaling"}
    for name, satellites, days in (("single", 1, 0.2), ("constellation", 2, 0.1)):
        run = sim[name]
        assert set(run) == RUN_KEYS
        assert run["ok"] is True and run["satellites"] == satellites and run["days"] == days
        _positive(run, RUN_KEYS - {"ok"})
        # The run drains past its days to the end of the next pass, never short of them.
        assert run["simulated_s"] >= days * 86_400
    assert sim["scaling"] > 0

    goodput = result["goodput"]
    config = goodput["config"]
    assert config["window_s"] == 2.0 and config["rate_down_bps"] == 20e6
    assert config["report_bytes"] == 65536 and 0 < config["ideal_fraction"] < 1
    raw, hub = goodput["raw_tcp"], goodput["hub"]
    open_s = config["window_s"] - config["acquisition_s"]
    assert raw["open_s"] == hub["open_s"] == pytest.approx(open_s)
    _positive(raw, {"bytes", "bytes_per_s", "goodput_fraction", "proxy_bytes"})
    assert raw["bytes"] == raw["proxy_bytes"]  # the sink got what the proxy delivered
    _positive(
        hub, {f"{k}_bytes{s}" for k in ("link", "envelope", "payload") for s in ("", "_per_s")}
    )
    _positive(hub, set(RATE_FRACTIONS) | {"reports_applied", "connections"})
    assert hub["payload_bytes"] == hub["reports_applied"] * config["report_bytes"]
    assert hub["payload_bytes"] < hub["envelope_bytes"] <= hub["link_bytes"]
    assert hub["reports_spooled"] >= hub["reports_applied"]
    # Shaped by the proxy: no sender gets more than the configured rate through it.
    for fraction in (raw["goodput_fraction"], *(hub[k] for k in RATE_FRACTIONS)):
        assert fraction <= 1.0
    for ratio in ("hub_vs_raw_tcp", "hub_link_vs_raw_tcp", "payload_vs_raw_tcp"):
        assert goodput[ratio] > 0
