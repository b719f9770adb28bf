"""PNG plots of results: latency CDFs of runs, SLO attainment against request rate."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from loadgen.result import GoodputResult, RunResult

PANELS = (("ttft", "Time to first token"), ("tpot", "Time per output token"),
          ("itl", "Inter-token latency"), ("e2el", "End-to-end latency"))
# A CDF drawn through this many quantiles looks the same as one through every sample, and
# stays cheap when a long run has millions of inter-token gaps.
CDF_POINTS = 1000


def _samples(run: RunResult, metric: str) -> list[float]:
    done = [r for r in run.records if r.success]
    if metric == "ttft":
        return [r.ttft for r in done if r.ttft is not None]
    if metric == "tpot":
        return [t for r in done if (t := r.tpot) is not None]
    if metric == "itl":
        return [gap for r in done for gap in r.itl]
    return [r.latency for r in done if r.latency is not None]


def latency_cdfs(runs: list[tuple[str, RunResult]], path: Path) -> None:
    """One panel per latency metric, one curve per run, SLO targets as dashed lines."""
    fig = Figure(figsize=(11, 7.5), layout="constrained")
    for ax, (metric, title) in zip(fig.subplots(2, 2).flat, PANELS, strict=True):
        targets = set()
        for label, run in runs:
            values = np.asarray(_samples(run, metric)) * 1000
            if values.size == 0:
                continue
            probs = np.linspace(0, 1, min(CDF_POINTS, values.size))
            ax.plot(np.quantile(values, probs), probs, label=label)
            target = getattr(run.config.slo, metric, None)
            if target is not None:
                targets.add(target * 1000)
        for target in sorted(targets):
            ax.axvline(target, linestyle="--", color="grey", linewidth=1,
                       label=f"SLO {target:g} ms")
        ax.set_title(title)
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of requests" if metric != "itl" else "fraction of gaps")
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3)
        if runs and ax.lines:
            ax.legend(loc="lower right", fontsize="small")
    fig.savefig(path, dpi=110)


def attainment_curve(
    sweeps: list[tuple[str, list[tuple[float, float]], float | None]],
    target: float | None,
    path: Path,
) -> None:
    """SLO attainment (%) against request rate: one line per sweep of (rate, attainment)
    points, its goodput marked, and the attainment target as a dashed line."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for label, points, goodput in sweeps:
        rates, attained = zip(*sorted(points), strict=True)
        (line,) = ax.plot(rates, [a * 100 for a in attained], marker="o", label=label)
        if goodput:
            ax.axvline(goodput, color=line.get_color(), linestyle=":", linewidth=1.2)
            ax.annotate(f"goodput {goodput:.3g}", (goodput, 50), color=line.get_color(),
                        rotation=90, fontsize="small", ha="right", va="center")
    if target is not None:
        ax.axhline(target * 100, linestyle="--", color="grey", linewidth=1,
                   label=f"target {target:.0%}")
    ax.set_title("SLO attainment against request rate")
    ax.set_xlabel("request rate (req/s)")
    ax.set_ylabel("SLO attainment (%)")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    fig.savefig(path, dpi=110)


def plot_results(
    named: list[tuple[str, RunResult | GoodputResult]], out_dir: Path, prefix: str
) -> list[Path]:
    """Write every plot the results allow; returns the files written.

    Runs give latency CDFs; goodput searches, or several runs with SLOs at different rates,
    give an attainment curve.
    """
    runs = [(label, r) for label, r in named if isinstance(r, RunResult)]
    searches = [(label, r) for label, r in named if isinstance(r, GoodputResult)]
    written: list[Path] = []
    if runs:
        path = out_dir / f"{prefix}latency_cdf.png"
        latency_cdfs(runs, path)
        written.append(path)
    sweeps = [
        (label, [(p.request_rate, p.slo_attainment) for p in r.points], r.goodput)
        for label, r in searches
    ]
    swept_runs = [
        (r.config.request_rate, r.summary.slo_attainment)
        for _, r in runs
        if r.summary.slo_attainment is not None
        and r.config.request_rate is not None
        and math.isfinite(r.config.request_rate)
    ]
    if len({rate for rate, _ in swept_runs}) >= 2:
        sweeps.append(("runs", swept_runs, None))
    if sweeps:
        target = searches[0][1].attainment_target if searches else None
        path = out_dir / f"{prefix}attainment_vs_rate.png"
        attainment_curve(sweeps, target, path)
        written.append(path)
    return written
