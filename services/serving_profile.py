"""Decode time per token, and the first token's overhead, as a running deployment serves them.

The engine profile times steps on an otherwise idle machine. In service the same decode step
also pays for streaming every token through the router, pulling the KV of newly prefilled
requests, and sharing the host with the prefill worker, the router and the clients. On the
2-core development machine (one thread per worker) that added under 1 ms to a 30 ms step with
one request in flight, but 9 ms (20%) with eight 128-token requests and 18 ms (30%) with eight
512-token ones: planned from the engine alone, attainment came out 25 to 56 points optimistic.

`pdserve profile --serving URL` measures it on a deployment of the shape being planned
(`pdserve up --prefill 1 --decode 1`, say): closed-loop load from the load generator at a few
concurrencies and two prompt lengths, random token ids so no prompt hits the prefix cache. Each
point's median time per output token becomes one decode row (batch = the concurrency, context
= its sequences' mean length while decoding), which the planner's decode coefficients are then
fitted to. The median TTFT at concurrency 1 minus the engine's prefill time of that prompt is
what the service adds to a first token (routing, the lease, the first streamed chunk).
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from planner.measurements import DecodeRow

CONCURRENCY = (1, 2, 4, 8, 16)
QUICK_CONCURRENCY = (1, 2, 4)
PROMPT_LENS = (128, 512)
OUTPUT_LEN = 64
ROUNDS = 3  # requests per point: ROUNDS x concurrency


class ServingProfileError(Exception):
    """The deployment could not be measured (unreachable, failed requests, bad answers)."""


@dataclass(frozen=True)
class ServingPoint:
    concurrency: int
    prompt_len: int
    tpot_ms: float  # median time per output token
    ttft_ms: float  # median time to first token

    def decode_row(self) -> DecodeRow:
        # While decoding, a sequence holds its prompt plus on average half its output.
        context = self.concurrency * (self.prompt_len + OUTPUT_LEN // 2)
        return DecodeRow(self.concurrency, context, self.tpot_ms)

    def to_json(self) -> dict:
        return {"concurrency": self.concurrency, "prompt_len": self.prompt_len,
                "tpot_ms": self.tpot_ms, "ttft_ms": self.ttft_ms}


def check_reachable(url: str, model: str | None) -> None:
    """Fail before the engine grid (a minute or more) if nothing answers at `url`, or if it
    does not serve `model`."""
    import httpx

    from loadgen.client import EndpointError, base_url

    try:
        base = base_url(url)
        answer = httpx.get(f"{base}/v1/models", timeout=10)
        answer.raise_for_status()
        served = [m.get("id") for m in answer.json().get("data", [])]
    except EndpointError as exc:
        raise ServingProfileError(str(exc)) from exc
    except httpx.HTTPError as exc:
        raise ServingProfileError(f"cannot reach {url}: {exc}") from exc
    except (ValueError, AttributeError) as exc:
        raise ServingProfileError(f"{url}/v1/models did not answer a model list") from exc
    if model is not None and model not in served:
        raise ServingProfileError(f"{url} does not serve model {model!r} (it serves "
                                  f"{', '.join(map(str, served)) or 'none'})")


def measure_serving(url: str, model: str | None, vocab_size: int, quick: bool,
                    progress) -> list[ServingPoint]:
    """One closed-loop run per (prompt length, concurrency) against `url`."""
    from loadgen.cli import main as bench_main

    points = []
    concurrencies = QUICK_CONCURRENCY if quick else CONCURRENCY
    with tempfile.TemporaryDirectory() as tmp:
        for prompt_len in PROMPT_LENS:
            for concurrency in concurrencies:
                out = Path(tmp) / f"c{concurrency}-p{prompt_len}.json"
                argv = ["run", "--url", url, "--concurrency", str(concurrency),
                        "--num-prompts", str(ROUNDS * concurrency),
                        "--input-len", str(prompt_len), "--output-len", str(OUTPUT_LEN),
                        "--random-token-ids", "--vocab-size", str(vocab_size),
                        "--seed", str(len(points) + 1), "--out", str(out), "--no-progress"]
                if model:
                    argv += ["--model", model]
                errors = io.StringIO()
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(errors):
                    code = bench_main(argv)
                if code != 0:
                    raise ServingProfileError(f"measuring {url}: {errors.getvalue().strip()}")
                points.append(_point(json.loads(out.read_text()), concurrency, prompt_len, url))
                progress.update(1)
    return points


def _point(result: dict, concurrency: int, prompt_len: int, url: str) -> ServingPoint:
    if result["failed"]:
        raise ServingProfileError(f"{url}: {result['failed']} of {result['num_prompts']} "
                                  f"requests failed at concurrency {concurrency} "
                                  f"({result['error_counts']})")
    return ServingPoint(concurrency, prompt_len, result["median_tpot_ms"],
                        result["median_ttft_ms"])


def first_token_overhead_ms(points: list[ServingPoint], prefill_ms) -> float:
    """Median over the concurrency-1 points of TTFT minus the engine's prefill time."""
    alone = [p for p in points if p.concurrency == 1]
    if not alone:
        return 0.0
    extra = [p.ttft_ms - prefill_ms(p.prompt_len, p.prompt_len ** 2) for p in alone]
    return max(0.0, statistics.median(extra))


def serving_steps(quick: bool) -> int:
    return len(PROMPT_LENS) * len(QUICK_CONCURRENCY if quick else CONCURRENCY)
