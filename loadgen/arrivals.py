"""When requests are sent: an open-loop arrival process at a rate, or a trace's own times."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

KINDS = ("poisson", "gamma", "constant")


class ArrivalError(ValueError):
    """An arrival process was asked for with a rate or burstiness that cannot work."""


@dataclass(frozen=True)
class Arrivals:
    """Open-loop arrivals at `rate` requests/s (math.inf sends all at once).

    `poisson` has exponential gaps; `gamma` has gamma gaps whose coefficient of variation is
    `cv` (above 1 is burstier than Poisson, below 1 smoother); `constant` is evenly spaced.
    """

    rate: float
    kind: str = "poisson"
    cv: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ArrivalError(f"unknown arrival process {self.kind!r} (one of {KINDS})")
        if not self.rate > 0:  # also rejects NaN
            raise ArrivalError(f"request rate must be positive (got {self.rate})")
        if not (self.cv > 0 and math.isfinite(self.cv)):
            raise ArrivalError(f"coefficient of variation must be positive (got {self.cv})")

    @property
    def burstiness(self) -> float | None:
        """The gamma shape, as `vllm bench serve --burstiness` names it (1 is Poisson);
        None for evenly spaced arrivals."""
        if self.kind == "constant":
            return None
        return 1.0 if self.kind == "poisson" else 1 / self.cv**2

    def times(self, n: int, seed: int) -> list[float]:
        """Send times of `n` requests in seconds from the start; the first is sent at 0."""
        if math.isinf(self.rate):
            return [0.0] * n
        if self.kind == "constant":
            return [i / self.rate for i in range(n)]
        # A stream of its own, so gaps are not correlated with the workload drawn from `seed`.
        rng = np.random.default_rng([seed, 1])
        shape = 1.0 if self.kind == "poisson" else 1 / self.cv**2
        gaps = rng.gamma(shape, 1 / (self.rate * shape), max(n - 1, 0))
        return [0.0, *np.cumsum(gaps).tolist()][:n]


def rescaled(times: list[float], rate: float) -> list[float]:
    """A trace's send times stretched or squeezed so its mean rate is `rate` (bursts kept)."""
    if not rate > 0:
        raise ArrivalError(f"request rate must be positive (got {rate})")
    if math.isinf(rate):
        return [0.0] * len(times)
    span = times[-1] - times[0] if times else 0.0
    if len(times) < 2 or span <= 0:
        return [i / rate for i in range(len(times))]
    # n requests over `span` seconds: n - 1 gaps, so the mean rate is (n - 1) / span.
    factor = (len(times) - 1) / (rate * span)
    return [(t - times[0]) * factor for t in times]
