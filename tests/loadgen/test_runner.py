"""Benchmark runs against the scripted server: schedules, concurrency, known attainment."""

import pytest

from loadgen.arrivals import Arrivals
from loadgen.client import Endpoint, StreamClient
from loadgen.metrics import SLO, summarize
from loadgen.runner import run
from loadgen.workload import Request


def _requests(n: int, output_len: int = 4) -> list[Request]:
    return [Request(f"request number {i}", prompt_len=i + 1, output_len=output_len)
            for i in range(n)]


async def test_open_loop_sends_on_schedule_and_keeps_request_order(scripted_url: str) -> None:
    requests = _requests(8)
    times = Arrivals(20.0, "constant").times(8, seed=0)
    async with StreamClient(Endpoint(scripted_url, "steady/open")) as client:
        records, duration = await run(client, requests, times=times, progress=False)
    assert [r.requested_output_len for r in records] == [4] * 8
    assert all(r.success for r in records)
    # Never early; the order of sends follows the schedule.
    assert all(r.send_time >= t - 1e-3 for r, t in zip(records, times, strict=True))
    assert [r.send_time for r in records] == sorted(r.send_time for r in records)
    # The run lasts at least until the last request's scripted end: 0.35 + 0.08 + 3 * 0.025.
    assert duration >= 0.35 + 0.155


async def test_closed_loop_keeps_exactly_the_concurrency_in_flight(scripted_url: str, stats):
    async with StreamClient(Endpoint(scripted_url, "steady/closed")) as client:
        records, _ = await run(client, _requests(9), concurrency=3, progress=False)
    assert all(r.success for r in records)
    seen = stats("steady/closed")
    assert seen["requests"] == 9 and seen["max_in_flight"] == 3


async def test_failures_are_counted_and_the_run_goes_on(scripted_url: str) -> None:
    async with StreamClient(Endpoint(scripted_url, "overloaded")) as client:
        records, duration = await run(client, _requests(5), concurrency=2, progress=False)
    summary = summarize(records, duration, SLO(ttft=1.0))
    assert (summary.completed, summary.failed) == (0, 5)
    assert summary.error_counts == {"HTTP 429: The server is overloaded, retry later.": 5}
    assert summary.slo_attainment == 0.0


async def test_attainment_and_goodput_match_the_script(scripted_url: str) -> None:
    # mixed: of every four requests one has a 600 ms first token and one 150 ms tokens;
    # against 300 ms TTFT and 75 ms TPOT targets exactly half attain the SLO.
    async with StreamClient(Endpoint(scripted_url, "mixed/attainment")) as client:
        records, duration = await run(client, _requests(8, output_len=5), concurrency=4,
                                      progress=False)
    summary = summarize(records, duration, SLO(ttft=0.300, tpot=0.075))
    assert summary.completed == 8
    assert summary.slo_attainment == 0.5
    assert summary.request_goodput == pytest.approx(4 / duration)


async def test_run_refuses_ambiguous_pacing(scripted_url: str) -> None:
    async with StreamClient(Endpoint(scripted_url, "steady")) as client:
        with pytest.raises(ValueError, match="exactly one"):
            await run(client, _requests(2), progress=False)
        with pytest.raises(ValueError, match="exactly one"):
            await run(client, _requests(2), times=[0, 0], concurrency=1, progress=False)
        with pytest.raises(ValueError, match="3 send times for 2 requests"):
            await run(client, _requests(2), times=[0, 0, 0], progress=False)
