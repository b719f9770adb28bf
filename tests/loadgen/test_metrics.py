"""Per-request records and their summary: statistics, throughput, attainment, goodput."""

import numpy as np
import pytest

from loadgen.metrics import METRICS, SLO, STATS, RequestRecord, Summary, summarize


def _ok(ttft: float, itl: list[float], prompt: int = 10, send: float = 0.0) -> RequestRecord:
    return RequestRecord(
        send_time=send, prompt_len=prompt, output_len=len(itl) + 1,
        requested_output_len=len(itl) + 1, ttft=ttft, itl=itl,
        latency=ttft + sum(itl), success=True,
    )


def _failed(error: str) -> RequestRecord:
    return RequestRecord(send_time=0.0, prompt_len=10, output_len=0, requested_output_len=4,
                         error=error)


def test_tpot_is_decode_time_per_token_after_the_first() -> None:
    record = _ok(0.2, [0.01, 0.03, 0.02])
    assert record.tpot == pytest.approx((record.latency - 0.2) / 3)
    # The server's usage may say more tokens than chunks arrived (several tokens a chunk).
    record.output_len = 7
    assert record.tpot == pytest.approx(0.06 / 6)
    assert _ok(0.2, []).tpot is None
    assert _failed("x").tpot is None


def test_slo_needs_every_given_target() -> None:
    fast, slow_start, slow_tokens = _ok(0.1, [0.02] * 4), _ok(0.5, [0.02] * 4), _ok(0.1, [0.1] * 4)
    both = SLO(ttft=0.2, tpot=0.05)
    assert [both.met(r) for r in (fast, slow_start, slow_tokens)] == [True, False, False]
    assert SLO(ttft=0.2).met(slow_tokens) and SLO(tpot=0.05).met(slow_start)
    assert both.met(_ok(0.1, []))  # one token: no TPOT to miss
    assert not both.met(_failed("HTTP 500: boom"))
    assert not SLO().given and SLO(tpot=1).given


def test_summary_statistics_and_throughput() -> None:
    records = [_ok(0.1 * (i + 1), [0.01 * (i + 1)] * 3, prompt=100) for i in range(10)]
    records += [_failed("HTTP 429: busy"), _failed("HTTP 429: busy"), _failed("timed out")]
    s = summarize(records, duration=5.0, slo=SLO())
    assert (s.completed, s.failed) == (10, 3)
    assert s.total_input_tokens == 1000 and s.total_output_tokens == 40
    assert s.request_throughput == pytest.approx(2.0)
    assert s.output_throughput == pytest.approx(8.0)
    assert s.total_token_throughput == pytest.approx(208.0)
    ttfts = np.array([0.1 * (i + 1) for i in range(10)]) * 1000
    assert s.ttft.mean == pytest.approx(ttfts.mean())
    assert s.ttft.median == pytest.approx(np.median(ttfts))
    assert s.ttft.p90 == pytest.approx(np.percentile(ttfts, 90))
    assert s.ttft.p99 == pytest.approx(np.percentile(ttfts, 99))
    assert s.tpot.mean == pytest.approx(np.mean([10.0 * (i + 1) for i in range(10)]))
    assert s.itl.median == pytest.approx(55.0)
    assert s.e2el.mean == pytest.approx(np.mean([(0.1 + 0.03) * (i + 1) for i in range(10)]) * 1e3)
    assert s.slo_attainment is None and s.request_goodput is None
    assert s.error_counts == {"HTTP 429: busy": 2, "timed out": 1}


def test_attainment_counts_failures_as_misses() -> None:
    records = [_ok(0.1, [0.02] * 3)] * 6 + [_ok(0.9, [0.02] * 3)] * 2 + [_failed("x")] * 2
    s = summarize(records, duration=2.0, slo=SLO(ttft=0.5, tpot=0.05))
    assert s.slo_attainment == pytest.approx(0.6)
    assert s.request_goodput == pytest.approx(3.0)


def test_empty_or_all_failed_runs_summarize_without_numbers() -> None:
    s = summarize([_failed("refused")] * 3, duration=0.5, slo=SLO(ttft=1))
    assert s.completed == 0 and s.ttft.mean is None and s.slo_attainment == 0.0
    assert summarize([], duration=0.0, slo=SLO(ttft=1)).slo_attainment is None


def test_summary_fields_carry_vllm_names_and_round_trip() -> None:
    s = summarize([_ok(0.1, [0.01] * 5)] * 3, duration=1.0, slo=SLO(ttft=0.5))
    data = s.to_dict()
    for name in ("completed", "failed", "request_throughput", "output_throughput",
                 "total_token_throughput", "slo_attainment", "duration"):
        assert name in data
    for metric in METRICS:
        for stat in STATS:
            assert f"{stat}_{metric}_ms" in data
    assert data["mean_ttft_ms"] == pytest.approx(100.0)
    assert Summary.from_dict(data) == s
