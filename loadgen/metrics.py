"""Per-request measurements and their summary: latency statistics, throughput, SLO attainment."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

# Latency metrics in the order reports show them, named as `vllm bench serve` names them.
METRICS = ("ttft", "tpot", "itl", "e2el")
STATS = ("mean", "median", "std", "p90", "p99")


@dataclass
class RequestRecord:
    """What one request measured; times in seconds, `send_time` from the start of the run."""

    send_time: float
    prompt_len: int
    output_len: int  # generated tokens: the server's usage when reported, else content chunks
    requested_output_len: int
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    latency: float | None = None  # end-to-end: send to the last content token
    success: bool = False
    error: str = ""

    @property
    def tpot(self) -> float | None:
        """(E2E - TTFT) / (output tokens - 1); None when fewer than two tokens came back."""
        if not self.success or self.output_len < 2 or self.latency is None or self.ttft is None:
            return None
        return (self.latency - self.ttft) / (self.output_len - 1)


@dataclass(frozen=True)
class SLO:
    """Latency targets in seconds; a request attains the SLO when it meets every target given."""

    ttft: float | None = None
    tpot: float | None = None

    @property
    def given(self) -> bool:
        """Whether any target is set."""
        return self.ttft is not None or self.tpot is not None

    def met(self, record: RequestRecord) -> bool:
        """Whether `record` succeeded within the targets (a one-token output has no TPOT)."""
        if not record.success or record.ttft is None:
            return False
        if self.ttft is not None and record.ttft > self.ttft:
            return False
        tpot = record.tpot
        return self.tpot is None or tpot is None or tpot <= self.tpot


@dataclass(frozen=True)
class LatencyStats:
    """Mean, median, standard deviation and percentiles of one latency metric, in ms."""

    mean: float | None = None
    median: float | None = None
    std: float | None = None
    p90: float | None = None
    p99: float | None = None

    @classmethod
    def of(cls, seconds: list[float]) -> LatencyStats:
        """Statistics of `seconds` (empty gives all None)."""
        if not seconds:
            return cls()
        ms = np.asarray(seconds, dtype=float) * 1000
        p90, p99 = np.percentile(ms, [90, 99])
        return cls(
            float(ms.mean()), float(np.median(ms)), float(ms.std()), float(p90), float(p99)
        )


@dataclass(frozen=True)
class Summary:
    """A run's aggregate figures; `to_dict` gives them the names `vllm bench serve` uses."""

    duration: float
    completed: int
    failed: int
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    ttft: LatencyStats
    tpot: LatencyStats
    itl: LatencyStats
    e2el: LatencyStats
    slo_attainment: float | None = None  # share of all sent requests that met the SLO
    request_goodput: float | None = None  # requests meeting the SLO per second
    error_counts: dict[str, int] = field(default_factory=dict)  # error message -> requests

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON fields: `mean_ttft_ms`, `p99_itl_ms`, ... next to the counts."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, LatencyStats):
                out.update({f"{stat}_{f.name}_ms": v for stat, v in asdict(value).items()})
            else:
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Summary:
        """Inverse of `to_dict`; unknown keys are ignored."""
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in METRICS:
                kwargs[f.name] = LatencyStats(
                    **{stat: data.get(f"{stat}_{f.name}_ms") for stat in STATS}
                )
            elif f.name in data:
                kwargs[f.name] = data[f.name]
        return cls(**kwargs)


def summarize(records: list[RequestRecord], duration: float, slo: SLO) -> Summary:
    """Aggregate `records` of a run that took `duration` seconds (first send to last reply)."""
    done = [r for r in records if r.success]
    total_in = sum(r.prompt_len for r in done)
    total_out = sum(r.output_len for r in done)

    def rate(count: int) -> float:
        return count / duration if duration > 0 else 0.0

    attainment = goodput = None
    if slo.given and records:
        met = sum(slo.met(r) for r in records)
        attainment = met / len(records)
        goodput = rate(met)
    errors = Counter(r.error for r in records if not r.success)
    return Summary(
        duration=duration,
        completed=len(done),
        failed=len(records) - len(done),
        total_input_tokens=total_in,
        total_output_tokens=total_out,
        request_throughput=rate(len(done)),
        output_throughput=rate(total_out),
        total_token_throughput=rate(total_in + total_out),
        ttft=LatencyStats.of([r.ttft for r in done if r.ttft is not None]),
        tpot=LatencyStats.of([t for r in done if (t := r.tpot) is not None]),
        itl=LatencyStats.of([gap for r in done for gap in r.itl]),
        e2el=LatencyStats.of([r.latency for r in done if r.latency is not None]),
        slo_attainment=attainment,
        request_goodput=goodput,
        error_counts=dict(errors.most_common()),
    )
