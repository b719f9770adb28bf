"""What `--share-cores` pays to change a decode worker's thread count between steps.

A decode worker that shares cores with its prefill partner calls `torch.set_num_threads` before
a step whenever the count differs from the last one. This script runs decode steps of the real
SmolLM2 engine (bfloat16, a batch of `--batch` running sequences of 256 prompt tokens) three
ways: always one thread, always two, and alternating 1, 2, 1, 2 (a switch before every step),
and prints the median step time of each count in each pattern.

    python bench/thread_switch_cost.py [--batch 5] [--steps 40] [--rounds 2]

On the development machine (batch 5, two rounds; steps slow a little as the contexts grow):
one thread 18.3 and 20.8 ms constant against 20.0 and 21.6 alternating, two threads 14.0 and
15.2 against 14.8 and 15.9. A switch costs 0.7 to 1.7 ms of the step after it; a shared pair
switches only when the other worker's use of its core changes, not every step.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from cli_types import positive  # noqa: E402

from services.engine.config import EngineConfig  # noqa: E402
from services.engine.engine import LLMEngine  # noqa: E402
from services.engine.sampling_params import SamplingParams  # noqa: E402

VOCAB = 49152


def medians(engine: LLMEngine, threads_of: Callable[[int], int], steps: int) -> dict[int, float]:
    """Median ms of the decode steps run with each thread count."""
    times: dict[int, list[float]] = {}
    for k in range(steps):
        n = threads_of(k)
        torch.set_num_threads(n)
        t = time.perf_counter()
        engine.step()
        times.setdefault(n, []).append(1e3 * (time.perf_counter() - t))
    return {n: statistics.median(v) for n, v in sorted(times.items())}


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--batch", type=positive, default=5, help="running sequences (default 5)")
    ap.add_argument("--steps", type=positive, default=40, help="steps per pattern (default 40)")
    ap.add_argument("--rounds", type=positive, default=2, help="repeats of the three patterns")
    args = ap.parse_args()

    torch.set_num_threads(2)
    engine = LLMEngine(
        EngineConfig(model="smollm2", dtype="bfloat16", threads=2, kv_cache_memory_gib=1)
    )
    rng = random.Random(0)
    params = SamplingParams(max_tokens=4000, temperature=1.0, ignore_eos=True)
    for i in range(args.batch):
        engine.add_request(f"d{i}", [rng.randrange(3, VOCAB) for _ in range(256)], params)
    while engine.scheduler.waiting or any(s.num_uncomputed > 1 for s in engine.scheduler.running):
        engine.step()
    print(f"SmolLM2 bf16, decode batch {args.batch}; median ms of {args.steps} steps a pattern")
    print(f"{'round':>5} {'1 constant':>11} {'1 alternating':>14} {'2 constant':>11} "
          f"{'2 alternating':>14}")  # fmt: skip
    for r in range(args.rounds):
        one = medians(engine, lambda k: 1, args.steps)[1]
        two = medians(engine, lambda k: 2, args.steps)[2]
        alt = medians(engine, lambda k: 1 + k % 2, args.steps)
        print(f"{r + 1:>5} {one:>11.1f} {alt[1]:>14.1f} {two:>11.1f} {alt[2]:>14.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
