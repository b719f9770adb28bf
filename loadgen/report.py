"""Readable terminal tables of a run or a goodput search."""

from __future__ import annotations

import math

from loadgen.metrics import SLO, LatencyStats, Summary
from loadgen.result import GoodputPoint, GoodputResult, RunConfig, RunResult

WIDTH = 64
LABELS = {"ttft": "TTFT", "tpot": "TPOT", "itl": "ITL", "e2el": "E2E latency"}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _slo_text(slo: SLO) -> str:
    parts = []
    if slo.ttft is not None:
        parts.append(f"TTFT <= {slo.ttft * 1000:g} ms")
    if slo.tpot is not None:
        parts.append(f"TPOT <= {slo.tpot * 1000:g} ms")
    return ", ".join(parts)


def _load_text(config: RunConfig) -> str:
    if config.max_concurrency is not None:
        return f"closed loop, concurrency {config.max_concurrency}"
    rate = config.request_rate
    if rate is None:
        return f"{config.arrival} at its own pace"
    pace = "all at once" if math.isinf(rate) else f"{rate:g} req/s"
    return f"{config.arrival}, {pace}"


def _line(name: str, value: object) -> str:
    return f"{name:<34}{value}"


def _latency_rows(summary: Summary) -> list[str]:
    rows = [f"{'latency (ms)':<16}{'mean':>12}{'median':>12}{'p90':>12}{'p99':>12}"]
    for key, label in LABELS.items():
        stats: LatencyStats = getattr(summary, key)
        values = (stats.mean, stats.median, stats.p90, stats.p99)
        rows.append(f"{label:<16}" + "".join(f"{_ms(v):>12}" for v in values))
    return rows


def _error_rows(summary: Summary, limit: int = 5) -> list[str]:
    if not summary.error_counts:
        return []
    rows = ["-" * WIDTH, "errors:"]
    for message, count in list(summary.error_counts.items())[:limit]:
        rows.append(f"  {count:>6} x {message[:WIDTH]}")
    if len(summary.error_counts) > limit:
        rows.append(f"  ... and {len(summary.error_counts) - limit} other kinds")
    return rows


def run_table(result: RunResult) -> str:
    """The summary of one run, in the layout of `vllm bench serve`'s table."""
    config, s = result.config, result.summary
    title = f" Benchmark result{': ' + config.label if config.label else ''} "
    rows = [
        title.center(WIDTH, "="),
        _line("Model:", config.model_id),
        _line("Endpoint:", f"{config.base_url} ({config.endpoint})"),
        _line("Load:", _load_text(config)),
        _line("Successful requests:", s.completed),
        _line("Failed requests:", s.failed),
        _line("Benchmark duration (s):", f"{s.duration:.2f}"),
        _line("Total input tokens:", s.total_input_tokens),
        _line("Total generated tokens:", s.total_output_tokens),
        _line("Request throughput (req/s):", f"{s.request_throughput:.2f}"),
        _line("Output token throughput (tok/s):", f"{s.output_throughput:.2f}"),
        _line("Total token throughput (tok/s):", f"{s.total_token_throughput:.2f}"),
    ]
    if s.slo_attainment is not None:
        rows.append(_line("SLO attainment:", f"{s.slo_attainment:.1%} ({_slo_text(config.slo)})"))
        rows.append(_line("Goodput (req/s meeting SLO):", f"{s.request_goodput:.2f}"))
    rows += ["-" * WIDTH, *_latency_rows(s), *_error_rows(s), "=" * WIDTH]
    return "\n".join(rows)


def point_line(point: GoodputPoint) -> str:
    """One line for a point of a goodput search, as it finishes."""
    verdict = "pass" if point.passed else "fail"
    s = point.summary
    return (
        f"rate {point.request_rate:8.3g} req/s  attainment {point.slo_attainment:6.1%}  {verdict}"
        f"  p90 TTFT {_ms(s.ttft.p90)} ms  p90 TPOT {_ms(s.tpot.p90)} ms"
    )


def goodput_table(result: GoodputResult) -> str:
    """Every rate tried, and the goodput."""
    target = result.attainment_target
    rows = [
        " Goodput search ".center(WIDTH, "="),
        _line("Model:", result.config.model_id),
        _line("Endpoint:", f"{result.config.base_url} ({result.config.endpoint})"),
        _line("SLO:", f"{_slo_text(result.config.slo)}, attainment >= {target:.0%}"),
        "-" * WIDTH,
        f"{'rate (req/s)':>12}{'attainment':>12}{'':>6}{'p90 TTFT':>12}{'p90 TPOT':>12}"
        f"{'failed':>8}",
    ]
    for p in result.points:
        s = p.summary
        rows.append(
            f"{p.request_rate:>12.3g}{p.slo_attainment:>12.1%}{'pass' if p.passed else 'fail':>6}"
            f"{_ms(s.ttft.p90):>12}{_ms(s.tpot.p90):>12}{s.failed:>8}"
        )
    rows.append("-" * WIDTH)
    rows.append(_line("Goodput (req/s):", f"{result.goodput:.3g}"))
    if result.goodput_per_gpu is not None:
        per_gpu = f"{result.goodput_per_gpu:.3g}"
        rows.append(_line(f"Goodput per GPU ({result.gpus} GPUs):", per_gpu))
    if result.note:
        rows.append(f"note: {result.note}")
    rows.append("=" * WIDTH)
    return "\n".join(rows)
