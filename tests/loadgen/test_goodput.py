"""Goodput search: bracketing and bisection, and a known answer from the scripted server."""

import pytest

from loadgen.arrivals import Arrivals
from loadgen.client import Endpoint, StreamClient
from loadgen.goodput import SearchError, SearchSettings, search
from loadgen.metrics import SLO, LatencyStats, Summary, summarize
from loadgen.runner import run
from loadgen.workload import Request


def _summary(attainment: float) -> Summary:
    empty = LatencyStats()
    return Summary(1.0, 10, 0, 100, 100, 10.0, 100.0, 200.0, empty, empty, empty, empty,
                   slo_attainment=attainment)


def _step(capacity: float, tried: list[float]):
    """A server that meets the SLO for every request below `capacity` req/s and for half above."""

    async def run_at(rate: float) -> Summary:
        tried.append(rate)
        return _summary(1.0 if rate <= capacity else 0.5)

    return run_at


async def test_brackets_up_then_bisects() -> None:
    tried: list[float] = []
    outcome = await search(_step(7.3, tried), SearchSettings(target=0.9, start_rate=1.0))
    assert tried[:4] == [1.0, 2.0, 4.0, 8.0]
    assert 7.3 * 0.95 <= outcome.goodput <= 7.3
    assert outcome.note == ""
    rates = [p.request_rate for p in outcome.points]
    assert rates == sorted(rates) and len(rates) == len(tried)
    assert all(p.passed == (p.request_rate <= 7.3) for p in outcome.points)


async def test_brackets_down_when_the_start_fails() -> None:
    tried: list[float] = []
    outcome = await search(_step(0.7, tried), SearchSettings(target=0.9, start_rate=4.0))
    assert tried[:4] == [4.0, 2.0, 1.0, 0.5]
    assert 0.7 * 0.95 <= outcome.goodput <= 0.7


async def test_the_bounds_end_the_search_with_a_note() -> None:
    settings = SearchSettings(target=0.9, start_rate=1.0, min_rate=0.25, max_rate=8.0)
    high = await search(_step(100.0, []), settings)
    assert high.goodput == 8.0 and "raise --max-rate" in high.note
    low = await search(_step(0.1, []), settings)
    assert low.goodput == 0.0 and "no rate down to 0.25 req/s" in low.note


async def test_every_point_is_reported_as_it_finishes() -> None:
    seen = []
    outcome = await search(_step(3.0, []), SearchSettings(target=0.9), on_point=seen.append)
    assert sorted(seen, key=lambda p: p.request_rate) == outcome.points


@pytest.mark.parametrize(
    "kwargs", [{"target": 0}, {"target": 1.5}, {"target": 0.9, "start_rate": 0},
               {"target": 0.9, "min_rate": 2.0, "start_rate": 1.0},
               {"target": 0.9, "tolerance": 1.0}]
)
def test_impossible_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(SearchError):
        SearchSettings(**kwargs)


async def test_goodput_matches_the_scripted_capacity(scripted_url: str) -> None:
    # busy: first tokens stay at 50 ms while at most 6 requests are in flight, each lasting
    # 0.5 s, so at constant arrivals every request attains a 250 ms TTFT below 12 req/s and
    # only the first six do above it (their first tokens take 300 ms). The goodput is 12 req/s.
    requests = [Request(f"prompt {i}", 2, 10) for i in range(20)]
    slo = SLO(ttft=0.250, tpot=0.200)
    async with StreamClient(Endpoint(scripted_url, "busy/search")) as client:

        async def run_at(rate: float) -> Summary:
            times = Arrivals(rate, "constant").times(len(requests), seed=0)
            records, duration = await run(client, requests, times=times, progress=False)
            return summarize(records, duration, slo)

        # Tried: 8, 16, 12 (the edge itself, either way), then 10 and 11 or 14 and 13; every
        # rate but 12 lies nearly 40 ms or more of scheduling noise away from flipping.
        outcome = await search(run_at, SearchSettings(target=0.9, start_rate=8.0, tolerance=0.1))
    tried = [(round(p.request_rate, 2), p.slo_attainment) for p in outcome.points]
    assert 11.0 <= outcome.goodput <= 12.0, tried
    for point in outcome.points:
        if point.request_rate < 11.9:
            assert point.passed, tried
        if point.request_rate > 12.1:
            # Only the first six (and on a very busy machine perhaps one more) attain.
            assert point.slo_attainment < 0.5, tried
