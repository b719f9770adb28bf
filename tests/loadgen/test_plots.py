"""PNG plots: latency CDFs of runs, attainment against rate for sweeps."""

import dataclasses
from pathlib import Path

import numpy as np

from loadgen.metrics import SLO, RequestRecord, summarize
from loadgen.plots import plot_results
from loadgen.result import GoodputPoint, GoodputResult, RunConfig, RunResult

PNG = b"\x89PNG\r\n\x1a\n"


def _run(label: str, rate: float, scale: float) -> RunResult:
    slo = SLO(ttft=0.3, tpot=0.05)
    rng = np.random.default_rng(0)
    records = []
    for i in range(200):
        itl = list(rng.gamma(4, scale * 0.01, 15))
        ttft = float(rng.gamma(3, scale * 0.05))
        records.append(RequestRecord(i * 0.01, 100, 16, 16, ttft=ttft, itl=itl,
                                     latency=ttft + sum(itl), success=True))
    config = RunConfig("http://h", "m", "completions", "synthetic", 200, 0, request_rate=rate,
                       arrival="poisson", slo=slo, label=label)
    return RunResult(config, summarize(records, 4.0, slo), records)


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG and path.stat().st_size > 10_000


def test_one_run_gives_its_latency_cdfs(tmp_path: Path) -> None:
    written = plot_results([("base", _run("base", 2.0, 1.0))], tmp_path, "r_")
    assert written == [tmp_path / "r_latency_cdf.png"]
    assert _is_png(written[0])


def test_runs_at_several_rates_also_give_an_attainment_curve(tmp_path: Path) -> None:
    runs = [(f"{r} req/s", _run("", r, r)) for r in (1.0, 2.0, 4.0)]
    written = plot_results(runs, tmp_path, "")
    assert [p.name for p in written] == ["latency_cdf.png", "attainment_vs_rate.png"]
    assert all(_is_png(p) for p in written)


def test_goodput_results_give_an_attainment_curve(tmp_path: Path) -> None:
    run = _run("x", 1.0, 1.0)
    points = [GoodputPoint(r, a >= 0.9, dataclasses.replace(run.summary, slo_attainment=a))
              for r, a in ((1, 1.0), (2, 0.97), (4, 0.6), (3, 0.85), (2.5, 0.92))]
    searches = [("pdserve", GoodputResult(run.config, 0.9, 2.5, points, gpus=2)),
                ("colocated", GoodputResult(run.config, 0.9, 2.0, points[:3], gpus=2))]
    written = plot_results(searches, tmp_path, "")
    assert written == [tmp_path / "attainment_vs_rate.png"]
    assert _is_png(written[0])
