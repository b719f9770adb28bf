"""Result files: vLLM-compatible names, strict JSON, lossless round trips, clear errors."""

import dataclasses
import json
import math
from pathlib import Path

import pytest

from loadgen.metrics import SLO, RequestRecord, summarize
from loadgen.result import (
    GoodputPoint,
    GoodputResult,
    ResultError,
    RunConfig,
    RunResult,
    read_result,
    write_result,
)

VLLM_FIELDS = ["completed", "failed", "request_throughput", "output_throughput",
               "total_token_throughput", "duration", "total_input_tokens", "total_output_tokens",
               "backend", "model_id", "num_prompts", "request_rate", "burstiness",
               "max_concurrency", "date"] + [
    f"{stat}_{metric}_ms" for metric in ("ttft", "tpot", "itl", "e2el")
    for stat in ("mean", "median", "p90", "p99", "std")]


def _records() -> list[RequestRecord]:
    ok = RequestRecord(0.5, 12, 4, 4, ttft=0.125, itl=[0.025, 0.03125, 0.025], latency=0.20625,
                       success=True)
    failed = RequestRecord(0.75, 12, 0, 4, error="HTTP 503: draining")
    return [ok, failed]


TARGETS = SLO(ttft=0.5, tpot=0.05)


def _run(rate: float = math.inf, slo: SLO = TARGETS) -> RunResult:
    config = RunConfig("http://h:8000", "m", "chat", "synthetic", 2, seed=3, request_rate=rate,
                       arrival="poisson", burstiness=1.0, slo=slo, label="base")
    return RunResult(config, summarize(_records(), 1.0, slo), _records())


def test_run_result_has_vllm_names_and_strict_json(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    write_result(_run(), path)
    data = json.loads(path.read_text(), parse_constant=pytest.fail)
    for name in VLLM_FIELDS:
        assert name in data, name
    assert data["backend"] == "openai-chat"
    assert data["request_rate"] == "inf"
    assert data["slo_attainment"] == 0.5
    assert data["slo_ttft_ms"] == 500 and data["slo_tpot_ms"] == 50
    assert data["mean_ttft_ms"] == 125.0
    assert data["requests"][0]["tpot"] == pytest.approx(0.027083333)
    assert data["requests"][1]["error"] == "HTTP 503: draining"


def test_run_result_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    result = _run()
    write_result(result, path)
    back = read_result(path)
    assert isinstance(back, RunResult)
    assert back.config == result.config
    assert back.summary == result.summary
    assert back.records == result.records


def test_goodput_result_round_trips_with_per_gpu_figures(tmp_path: Path) -> None:
    run = _run(rate=2.0)
    low = dataclasses.replace(run.summary, slo_attainment=0.95)
    points = [GoodputPoint(2.0, True, low), GoodputPoint(4.0, False, run.summary)]
    result = GoodputResult(run.config, 0.9, 2.0, points, gpus=4)
    path = tmp_path / "g.json"
    write_result(result, path)
    data = json.loads(path.read_text())
    assert data["goodput"] == 2.0 and data["goodput_per_gpu"] == 0.5
    assert [p["request_rate"] for p in data["points"]] == [2.0, 4.0]
    assert data["points"][0]["slo_attainment"] == 0.95 and "mean_ttft_ms" in data["points"][0]
    back = read_result(path)
    assert isinstance(back, GoodputResult)
    assert back.points == points and back.gpus == 4 and back.goodput_per_gpu == 0.5


def test_a_detailed_vllm_result_reads_as_a_run(tmp_path: Path) -> None:
    vllm = {"date": "20250101-120000", "backend": "openai-chat", "model_id": "m",
            "num_prompts": 3, "request_rate": "inf", "max_concurrency": None, "duration": 2.0,
            "completed": 2, "total_input_tokens": 30, "total_output_tokens": 6,
            "request_throughput": 1.0, "mean_ttft_ms": 150.0,
            "input_lens": [10, 10, 10], "output_lens": [3, 3, 0],
            "ttfts": [0.1, 0.2, 0.0], "itls": [[0.02, 0.03], [0.04, 0.05], []],
            "errors": ["", "", "Bad Request"]}
    path = tmp_path / "vllm.json"
    path.write_text(json.dumps(vllm))
    run = read_result(path)
    assert isinstance(run, RunResult)
    assert run.config.endpoint == "chat" and run.config.label == "vllm"
    assert run.config.request_rate == math.inf
    assert (run.summary.completed, run.summary.failed) == (2, 1)
    assert run.summary.ttft.mean == pytest.approx(150.0)
    assert run.records[0].latency == pytest.approx(0.15)
    assert run.records[1].tpot == pytest.approx(0.045)
    assert run.summary.error_counts == {"Bad Request": 1}


def test_unreadable_results_are_explained(tmp_path: Path) -> None:
    with pytest.raises(ResultError, match="cannot read result"):
        read_result(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ResultError, match="not valid JSON"):
        read_result(bad)
    bad.write_text('{"hello": 1}')
    with pytest.raises(ResultError, match="not a result"):
        read_result(bad)
    bad.write_text('{"completed": 1}')
    with pytest.raises(ResultError, match="malformed"):
        read_result(bad)
    with pytest.raises(ResultError, match="cannot write result"):
        write_result(_run(), tmp_path / "no" / "such" / "dir.json")
