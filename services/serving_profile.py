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
fitted to.

The load should look like steady traffic, not like waves. With equal output lengths a closed
loop runs in lockstep: all its requests prefill together, join the decode batch in one step and
finish in the same step, so nearly every decode step runs with no prompt beside it and no KV
arriving, and its first tokens queue behind each other's prefills. Open-loop traffic spreads
both over all steps. So output lengths vary by +-50% around the mean, which lets the requests
drift apart after the first round, and that first round is not counted.

The median TTFT at concurrency 1 minus the engine's prefill time of that prompt is what the
service adds to a first token (routing, the lease, the first streamed chunk).
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
# Requests counted per point: ROUNDS x concurrency, at least MIN_COUNTED (at concurrency 1 a
# median of three requests is one request's luck). One more round runs first, not counted.
ROUNDS = 3
MIN_COUNTED = 12
OUTPUT_SPREAD = 0.5  # output lengths uniform within OUTPUT_LEN * (1 +- this)


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
        # Both prompt lengths at one concurrency, then the next: a slow minute on this host
        # then shifts neighbouring points of both lengths, not the slope between the lengths.
        for concurrency in concurrencies:
            for prompt_len in PROMPT_LENS:
                out = Path(tmp) / f"c{concurrency}-p{prompt_len}.json"
                argv = ["run", "--url", url, "--concurrency", str(concurrency),
                        "--num-prompts", str(concurrency * (1 + rounds(concurrency))),
                        "--input-len", str(prompt_len), "--output-len", str(OUTPUT_LEN),
                        "--output-dist", "uniform", "--output-spread", str(OUTPUT_SPREAD),
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
    # The first round starts all at once (the lockstep this profile avoids): skip it.
    sent = sorted(result["requests"], key=lambda r: r["send_time"])[concurrency:]
    return ServingPoint(concurrency, prompt_len,
                        1e3 * statistics.median(r["tpot"] for r in sent if r["tpot"] is not None),
                        1e3 * statistics.median(r["ttft"] for r in sent))


def rounds(concurrency: int) -> int:
    """Counted rounds at `concurrency`."""
    return max(ROUNDS, -(-MIN_COUNTED // concurrency))


def first_token_overhead_ms(points: list[ServingPoint], prefill_ms) -> float:
    """Median over the concurrency-1 points of TTFT minus the engine's prefill time."""
    alone = [p for p in points if p.concurrency == 1]
    if not alone:
        return 0.0
    extra = [p.ttft_ms - prefill_ms(p.prompt_len, p.prompt_len ** 2) for p in alone]
    return max(0.0, statistics.median(extra))


def serving_steps(quick: bool) -> int:
    return len(PROMPT_LENS) * len(QUICK_CONCURRENCY if quick else CONCURRENCY)
