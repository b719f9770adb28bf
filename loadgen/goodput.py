"""Goodput search: the highest request rate whose run still meets the SLO attainment target.

Bracket first (double the rate until a run fails, or halve it until one passes), then bisect
between the highest passing and the lowest failing rate. Every point is a full run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from loadgen.metrics import Summary
from loadgen.result import GoodputPoint


class SearchError(ValueError):
    """The search bounds or target cannot work."""


@dataclass(frozen=True)
class SearchSettings:
    """Bounds of a goodput search; it stops when the bracket is narrower than `tolerance`
    times its upper end."""

    target: float  # attainment a rate must reach, in (0, 1]
    start_rate: float = 1.0
    min_rate: float = 1.0 / 16
    max_rate: float = 1024.0
    tolerance: float = 0.05

    def __post_init__(self) -> None:
        if not 0 < self.target <= 1:
            raise SearchError(f"attainment target must be in (0, 1] (got {self.target})")
        if not 0 < self.min_rate <= self.start_rate <= self.max_rate < float("inf"):
            raise SearchError(
                "rates must satisfy 0 < min-rate <= start-rate <= max-rate < inf "
                f"(got {self.min_rate}, {self.start_rate}, {self.max_rate})"
            )
        if not 0 < self.tolerance < 1:
            raise SearchError(f"tolerance must be in (0, 1) (got {self.tolerance})")


@dataclass(frozen=True)
class SearchOutcome:
    """The goodput found, every point run on the way (by rate), and a note if a bound hit."""

    goodput: float
    points: list[GoodputPoint]
    note: str = ""


RunAt = Callable[[float], Awaitable[Summary]]


async def search(
    run_at: RunAt,
    settings: SearchSettings,
    on_point: Callable[[GoodputPoint], None] | None = None,
) -> SearchOutcome:
    """Find the goodput by calling `run_at(rate)` for a full run's summary at each rate tried."""
    points: list[GoodputPoint] = []

    async def passes(rate: float) -> bool:
        summary = await run_at(rate)
        attainment = summary.slo_attainment
        if attainment is None:
            raise SearchError("runs of a goodput search need an SLO to measure attainment")
        point = GoodputPoint(rate, attainment >= settings.target, summary)
        points.append(point)
        if on_point:
            on_point(point)
        return point.passed

    def outcome(goodput: float, note: str = "") -> SearchOutcome:
        return SearchOutcome(goodput, sorted(points, key=lambda p: p.request_rate), note)

    rate = settings.start_rate
    if await passes(rate):
        low = rate
        while True:
            rate = low * 2
            if rate > settings.max_rate:
                return outcome(low, f"every rate up to {low:g} req/s passed; raise --max-rate")
            if not await passes(rate):
                high = rate
                break
            low = rate
    else:
        high = rate
        while True:
            rate = high / 2
            if rate < settings.min_rate:
                return outcome(0.0, f"no rate down to {high:g} req/s met the target")
            if await passes(rate):
                low = rate
                break
            high = rate
    while high - low > settings.tolerance * high:
        rate = (low + high) / 2
        if await passes(rate):
            low = rate
        else:
            high = rate
    return outcome(low)
