"""One PNG that tells a simulation's story (satellite.md §5.2, §5.4) at a glance.

Four panels: what each pass carried down, per priority class; how stale each status was on the
ground against the pass windows; the battery against its floor; and how many passes a status
or a model update needed. Drawn on a bare ``matplotlib.figure.Figure`` (Agg canvas), not
pyplot, so no display is needed and no figure stays registered after the call.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..orchestration.protocol.envelopes import Priority
from .metrics import SatelliteMetrics
from .simulation import SatelliteRun

__all__ = ["plot_runs"]

HOUR = 3600.0
_COLOURS = {
    Priority.CONTROL: "#7f7f7f",
    Priority.RESULT: "#d62728",
    Priority.STATUS: "#1f77b4",
    Priority.CHUNK: "#9467bd",
    Priority.BULK: "#ff7f0e",
}


def plot_runs(runs: list[SatelliteRun], metrics: list[SatelliteMetrics], path: str | Path) -> None:
    """Write the four-panel PNG for ``runs`` (still open: the ground stores are read)."""
    fig = Figure(figsize=(14, 10), layout="constrained")
    FigureCanvasAgg(fig)
    names = ", ".join(r.name for r in runs[:3]) + (" ..." if len(runs) > 3 else "")
    fig.suptitle(f"{runs[0].sim.scenario.name if runs else 'scenario'}: {names}")
    ax_bytes, ax_stale, ax_soc, ax_hist = fig.subplots(2, 2).flat

    # 1. Bytes down per pass, stacked by class, in pass order over all satellites.
    # The plan runs a day past the end; only the passes the run reached count.
    passes = sorted(
        (p for r in runs for p in r.passes if p.reached),
        key=lambda p: p.usable_from,
    )
    xs = list(range(1, len(passes) + 1))
    bottom = [0.0] * len(passes)
    for pri in Priority:
        heights = [p.down[pri] / 1e6 for p in passes]
        label = f"{pri.name.lower()} ({sum(heights):,.1f} MB in all)"
        ax_bytes.bar(xs, heights, bottom=bottom, color=_COLOURS[pri], label=label)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    aborted = [x for x, p in zip(xs, passes, strict=True) if p.aborted]
    if aborted:
        ax_bytes.plot(aborted, [0] * len(aborted), "kx", label="aborted pass")
    ax_bytes.set(title="Downlink per pass, by priority class", xlabel="pass", ylabel="MB")
    ax_bytes.legend(loc="upper right", fontsize="small")

    # 2. Status staleness against the pass windows.
    for p in passes:
        ax_stale.axvspan(p.usable_from / HOUR, p.ends_at / HOUR, color="green", alpha=0.3, lw=0)
    for run, m in zip(runs, metrics, strict=True):
        pts = sorted(set(m.status_delays))  # keys reported together: one dot
        ax_stale.scatter([m / HOUR for m, _ in pts], [d / 60 for _, d in pts], s=4,
                         label=run.name, rasterized=True)  # fmt: skip
    ax_stale.set(
        title="Status staleness on the ground (shaded: passes)",
        xlabel="made at (hours)",
        ylabel="delivered - made (minutes)",
    )
    if 1 < len(runs) <= 8:
        ax_stale.legend(loc="upper right", fontsize="small")

    # 3. State of charge and its floor.
    for run in runs:
        trace = run.power.trace()
        ax_soc.plot([t / HOUR for t, _ in trace], [s * 100 for _, s in trace], lw=0.8,
                    label=run.name)  # fmt: skip
    if metrics:
        ax_soc.axhline(metrics[0].soc_floor * 100, color="red", ls="--", label="floor")
    ax_soc.set(title="Battery state of charge", xlabel="time (hours)", ylabel="SoC (%)")
    ax_soc.set_ylim(0, 100)
    ax_soc.legend(loc="lower right", fontsize="small")

    # 4. Passes to deliver a status, with the passes each model update took.
    hist: dict[int, int] = {}
    for m in metrics:
        for k, v in m.status_passes_to_deliver.items():
            hist[k] = hist.get(k, 0) + v
    ax_hist.bar(list(hist), list(hist.values()), color=_COLOURS[Priority.STATUS],
                label="status versions")  # fmt: skip
    if hist and max(hist.values()) > 100 * min(hist.values()):
        ax_hist.set_yscale("log")  # a long tail of slow deliveries stays visible
    annotated = 0
    right = max(hist, default=1)
    for m in metrics:
        for model in m.models:
            n = model["passes"]
            if n is None:
                continue
            ax_hist.axvline(model["passes"], color=_COLOURS[Priority.CHUNK], ls=":")
            ax_hist.annotate(
                f" {m.name}/{model['name']} {model['megabytes']:g} MB: {n} pass{'es' * (n != 1)}",
                (model["passes"], 0.85 - 0.07 * (annotated % 12)),
                xycoords=("data", "axes fraction"),
                fontsize="small",
                color=_COLOURS[Priority.CHUNK],
            )
            annotated += 1
            right = max(right, model["passes"])
    ax_hist.set(
        title="Passes to deliver (status) and to activate (models, dotted)",
        xlabel="passes",
        ylabel="status versions",
    )
    ax_hist.set_xlim(0.5, right + 1.5)  # room for the labels right of the last line
    ax_hist.xaxis.get_major_locator().set_params(integer=True)
    ax_hist.legend(loc="upper right", fontsize="small")
    fig.savefig(path, dpi=100)
