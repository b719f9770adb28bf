"""The router's Prometheus metrics (names fixed by the project contract) and a per-request timer."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

OUTCOMES = ("ok", "error", "aborted", "rejected")

# Latency buckets in seconds, fine at the low end where TPOT and ITL live.
TOKEN_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
)
REQUEST_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    320.0,
    640.0,
)


class RouterMetrics:
    """Histograms of TTFT, ITL, TPOT and end-to-end latency; counters of requests and tokens."""

    def __init__(self) -> None:
        # A registry per router keeps several routers in one process (tests) from colliding.
        self.registry = CollectorRegistry()
        r = self.registry
        self.ttft = Histogram(
            "pdserve:time_to_first_token_seconds",
            "Time from request arrival to its first token leaving the router.",
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "pdserve:inter_token_latency_seconds",
            "Time between successive output tokens of a request.",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "pdserve:time_per_output_token_seconds",
            "Per request: (end-to-end latency - TTFT) / (output tokens - 1).",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "pdserve:e2e_request_latency_seconds",
            "Time from request arrival to its last token.",
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "pdserve:requests",
            "Finished requests by outcome: ok, error (server side), aborted (client went "
            "away), rejected (bad request, unauthorized, overloaded).",
            ["outcome"],
            registry=r,
        )
        for outcome in OUTCOMES:
            self.requests.labels(outcome)
        self.prompt_tokens = Counter(
            "pdserve:prompt_tokens", "Prompt tokens of admitted requests.", registry=r
        )
        self.generation_tokens = Counter(
            "pdserve:generation_tokens", "Output tokens relayed to clients.", registry=r
        )
        self.running = Gauge(
            "pdserve:requests_running", "Requests this router is serving now.", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def rejected(self) -> None:
        self.requests.labels("rejected").inc()


class RequestTimer:
    """Follows one admitted request from arrival to its last token and records it once."""

    def __init__(self, metrics: RouterMetrics, num_prompt_tokens: int):
        self.metrics = metrics
        self.start = time.monotonic()
        self.first: float | None = None
        self.last: float | None = None
        self.num_tokens = 0
        self.done = False
        metrics.running.inc()
        metrics.prompt_tokens.inc(num_prompt_tokens)

    def tokens(self, n: int) -> None:
        """`n` tokens arrived together."""
        if n <= 0:
            return
        now = time.monotonic()
        if self.first is None:
            self.first = now
            self.metrics.ttft.observe(now - self.start)
            n_gaps = n - 1
        else:
            n_gaps = n
        if n_gaps and self.last is not None:
            gap = (now - self.last) / n_gaps
            for _ in range(n_gaps):
                self.metrics.itl.observe(gap)
        self.last = now
        self.num_tokens += n
        self.metrics.generation_tokens.inc(n)

    def finish(self, outcome: str) -> None:
        """Record the outcome (ok, error, aborted) and, for ok, the per-request latencies."""
        if self.done:
            return
        self.done = True
        self.metrics.running.dec()
        self.metrics.requests.labels(outcome).inc()
        if outcome == "ok":
            end = self.last or time.monotonic()
            self.metrics.e2e.observe(end - self.start)
            if self.first is not None and self.num_tokens > 1:
                self.metrics.tpot.observe((end - self.first) / (self.num_tokens - 1))
