"""A worker's Prometheus metrics (``pdserve:`` names, vLLM style, labelled by role).

Load gauges and KV transfer counters are read at scrape time from snapshots (the engine's
stats after its last step, the KV layer's counters), so serving never pays for them; only the
step-time histogram is observed as steps happen, from the engine thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.engine.engine import EngineStats, StepResult

STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class WorkerSnapshot:
    """Everything the gauges and counters report, read at one instant."""

    stats: EngineStats
    num_queued: int  # not yet admitted: submitted to the engine thread or waiting in the engine
    kv_bytes: int
    kv_seconds: float
    kv_failures: int
    kv_leases_active: int


def step_phase(result: StepResult) -> str:
    """prefill, decode or mixed: what kind of tokens a step computed."""
    if result.num_decode_tokens == 0:
        return "prefill"
    return "decode" if result.num_prefill_tokens == 0 else "mixed"


class _SnapshotCollector(Collector):
    def __init__(self, role: str, snapshot: Callable[[], WorkerSnapshot]):
        self._role = role
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap, role = self._snapshot(), [self._role]
        stats = snap.stats
        used = 1.0 - stats.free_blocks / stats.total_blocks if stats.total_blocks else 0.0
        gauges = (
            ("num_requests_running", "Requests in the running batch.", stats.num_running),
            ("num_requests_waiting", "Requests waiting to be admitted.", snap.num_queued),
            (
                "num_requests_waiting_for_kv",
                "Admitted requests whose prompt KV is being pulled.",
                stats.num_fetching,
            ),
            ("kv_cache_usage_perc", "Fraction of KV cache blocks in use (0-1).", used),
            (
                "queued_prefill_tokens",
                "Prompt tokens waiting to be computed.",
                stats.queued_prefill_tokens,
            ),
            ("kv_leases_active", "KV leases granted and not yet released.", snap.kv_leases_active),
        )
        for name, doc, value in gauges:
            family = GaugeMetricFamily(f"pdserve:{name}", doc, labels=["role"])
            family.add_metric(role, value)
            yield family
        counters = (
            ("num_preemptions", "Sequences preempted (KV blocks ran out).", stats.num_preemptions),
            ("kv_transfer_bytes", "KV bytes sent (prefill) or received (decode).", snap.kv_bytes),
            ("kv_transfer_seconds", "Seconds spent moving KV bytes.", snap.kv_seconds),
            ("kv_transfer_failures", "KV transfers that failed.", snap.kv_failures),
        )
        for name, doc, value in counters:
            family = CounterMetricFamily(f"pdserve:{name}", doc, labels=["role"])
            family.add_metric(role, value)
            yield family


class WorkerMetrics:
    """The worker's own metric registry (not the process-global one)."""

    def __init__(self, role: str, snapshot: Callable[[], WorkerSnapshot]):
        self.role = role
        self.registry = CollectorRegistry()
        self._step_seconds = Histogram(
            "pdserve:step_seconds",
            "Wall time of one engine step, by what it computed.",
            ["role", "phase"],
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_SnapshotCollector(role, snapshot))

    def observe_step(self, result: StepResult) -> None:
        """Record one step (called on the engine thread; prometheus-client is thread-safe)."""
        self._step_seconds.labels(self.role, step_phase(result)).observe(result.seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
