"""Cost of a colocated engine step that carries a prompt and a decode batch together.

A colocated worker (`--role both`) runs a new prompt in the same step as its running decodes,
so every decode waits for the whole step. Offline, on this machine, such a step costs about as
much as the prompt alone plus a full decode step, although the decode rows only add a few rows
to each matrix multiply. This script measures it: the median wall time of a step of
`--prompt` new tokens alone, of the same prompt beside a decode batch of each `--batch`, and
of a decode step of that batch alone, on the real SmolLM2 engine in bfloat16.

    python bench/mixed_step_cost.py [--threads 2] [--prompt 256] [--batch 1,5]

On the development machine, two threads: a 256-token prompt took 71 to 75 ms alone and 86 to
94 ms beside one to five decodes, while 255 + 1 and 251 + 5 (256 rows either way) cost 1 to 9
ms more than their prompt alone. The matrix multiplies get markedly slower past 256 rows here.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from cli_types import positive  # noqa: E402

from services.engine.config import EngineConfig  # noqa: E402
from services.engine.engine import LLMEngine  # noqa: E402
from services.engine.sampling_params import SamplingParams  # noqa: E402

VOCAB = 49152
DECODE_CONTEXT = 256  # prompt length of the running sequences


def batch_sizes(text: str) -> list[int]:
    try:
        values = [int(b) for b in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated integers: {text!r}") from None
    if any(b < 0 for b in values):
        raise argparse.ArgumentTypeError(f"batch sizes must be 0 or more: {text!r}")
    return values


def measure(engine: LLMEngine, rng: random.Random, batch: int, prompt: int,
            repeats: int) -> tuple[float, float]:
    """Median ms of (a step of `prompt` new tokens beside `batch` decodes, a decode step)."""
    running = SamplingParams(max_tokens=2048, temperature=1.0, ignore_eos=True)
    for i in range(batch):
        engine.add_request(f"d{batch}-{i}", [rng.randrange(3, VOCAB) for _ in
                                             range(DECODE_CONTEXT)], running)
    while engine.scheduler.waiting or any(s.num_uncomputed > 1 for s in engine.scheduler.running):
        engine.step()
    mixed, decode = [], []
    one_token = SamplingParams(max_tokens=1, temperature=1.0, ignore_eos=True)
    for k in range(repeats):
        engine.add_request(f"p{batch}-{k}", [rng.randrange(3, VOCAB) for _ in range(prompt)],
                           one_token)
        t = time.perf_counter()
        result = engine.step()
        mixed.append(time.perf_counter() - t)
        assert result.num_prefill_tokens == prompt and result.num_decode_tokens == batch
        if batch:
            t = time.perf_counter()
            engine.step()
            decode.append(time.perf_counter() - t)
    for i in range(batch):
        engine.abort(f"d{batch}-{i}")
    return 1e3 * statistics.median(mixed), 1e3 * statistics.median(decode) if decode else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=positive, default=2, help="torch threads (default 2)")
    ap.add_argument("--prompt", type=positive, default=256, help="new prompt tokens a step")
    ap.add_argument("--batch", type=batch_sizes, default=[1, 5],
                    help="decode batch sizes beside the prompt (default 1,5)")
    ap.add_argument("--repeats", type=positive, default=12)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    engine = LLMEngine(EngineConfig(model="smollm2", dtype="bfloat16", threads=args.threads,
                                    max_num_batched_tokens=max(4096, args.prompt + 512),
                                    kv_cache_memory_gib=1))
    rng = random.Random(0)
    alone, _ = measure(engine, rng, 0, args.prompt, args.repeats)
    print(f"SmolLM2 bf16, {args.threads} thread(s), {args.prompt}-token prompt; median of "
          f"{args.repeats} steps\n")
    print(f"{'decode batch':>12} {'prompt + decodes':>17} {'prompt alone':>13} "
          f"{'decodes alone':>14} {'extra for decodes':>18}")
    for batch in args.batch:
        mixed, decode = measure(engine, rng, batch, args.prompt, args.repeats)
        print(f"{batch:>12} {mixed:>14.1f} ms {alone:>10.1f} ms {decode:>11.1f} ms "
              f"{mixed - alone:>15.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
