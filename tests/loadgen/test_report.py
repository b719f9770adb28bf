"""Terminal tables of runs and goodput searches."""

import dataclasses

from loadgen.metrics import SLO, RequestRecord, summarize
from loadgen.report import goodput_table, point_line, run_table
from loadgen.result import GoodputPoint, GoodputResult, RunConfig, RunResult

TARGETS = SLO(ttft=0.5, tpot=0.05)


def _run(slo: SLO = TARGETS) -> RunResult:
    records = [RequestRecord(0.0, 10, 3, 3, ttft=0.1, itl=[0.02, 0.04], latency=0.16,
                             success=True),
               RequestRecord(0.1, 10, 0, 3, error="HTTP 429: slow down")]
    config = RunConfig("http://h:8000", "smol", "completions", "synthetic", 2, 0,
                       max_concurrency=4, slo=slo, label="colocated")
    return RunResult(config, summarize(records, 2.0, slo), records)


def test_run_table_shows_counts_latencies_attainment_and_errors() -> None:
    table = run_table(_run())
    assert "Benchmark result: colocated" in table
    assert "closed loop, concurrency 4" in table
    assert "Successful requests:              1" in table
    assert "Failed requests:                  1" in table
    assert "50.0% (TTFT <= 500 ms, TPOT <= 50 ms)" in table
    ttft_row = next(line for line in table.splitlines() if line.startswith("TTFT"))
    assert ttft_row.split()[1:] == ["100.00"] * 4
    tpot_row = next(line for line in table.splitlines() if line.startswith("TPOT"))
    assert tpot_row.split()[1] == "30.00"
    assert "1 x HTTP 429: slow down" in table


def test_run_table_without_slo_has_no_attainment() -> None:
    assert "attainment" not in run_table(_run(SLO()))


def test_goodput_table_lists_points_and_per_gpu() -> None:
    run = _run()
    points = [GoodputPoint(1.0, True, dataclasses.replace(run.summary, slo_attainment=1.0)),
              GoodputPoint(2.0, False, run.summary)]
    table = goodput_table(GoodputResult(run.config, 0.9, 1.0, points, gpus=2, note="a note"))
    assert "attainment >= 90%" in table
    assert "Goodput (req/s):                  1" in table
    assert "Goodput per GPU (2 GPUs):         0.5" in table
    assert "note: a note" in table
    assert "pass" in table and "fail" in table
    assert point_line(points[1]).startswith("rate        2 req/s  attainment  50.0%  fail")
