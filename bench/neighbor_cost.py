"""What a busy decode worker on the same host costs a prefill step.

`pdserve profile` times its step grid on an otherwise idle machine. In a one-prefill,
one-decode deployment on one CPU host the prefill worker computes while the decode worker
streams the same weights through the same memory, so its steps may run slower in service than
in the profile. This script measures that directly: the real SmolLM2 engine (bfloat16, one
thread) times prefill steps of `--prompts` prompts of `--prompt-len` tokens, alternately with
the host otherwise idle and beside a second process running decode steps of `--batch`
sequences on one thread, and prints the median of each and their ratio, round by round.

    python bench/neighbor_cost.py [--prompt-len 256] [--prompts 1] [--batch 4] [--steps 12]

The neighbour is the engine in a child process (`--neighbor`), stopped with SIGTERM between
conditions.
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from cli_types import positive  # noqa: E402

from services.engine.config import EngineConfig  # noqa: E402
from services.engine.engine import LLMEngine  # noqa: E402
from services.engine.sampling_params import SamplingParams  # noqa: E402

VOCAB = 49152
DECODE_PROMPT = 256  # tokens of context each neighbour sequence starts with
NEIGHBOR_TOKENS = 1500  # a neighbour sequence is replaced after this many tokens


def engine(max_batched_tokens: int) -> LLMEngine:
    torch.set_num_threads(1)
    return LLMEngine(
        EngineConfig(
            model="smollm2",
            dtype="bfloat16",
            threads=1,
            kv_cache_memory_gib=1,
            max_num_batched_tokens=max_batched_tokens,
            enable_prefix_caching=False,
        )
    )


def neighbor(batch: int) -> int:
    """Decode `batch` sequences forever (a finished one is replaced); say 'ready' once running."""
    eng = engine(batch * DECODE_PROMPT)
    rng = random.Random(1)
    params = SamplingParams(max_tokens=NEIGHBOR_TOKENS, temperature=1.0, ignore_eos=True)
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    n = 0
    ready = False
    while not stop:
        while len(eng.scheduler.running) + len(eng.scheduler.waiting) < batch:
            eng.add_request(f"n{n}", [rng.randrange(3, VOCAB) for _ in range(DECODE_PROMPT)],
                            params)
            n += 1
        eng.step()
        if not ready and not eng.scheduler.waiting:
            print("ready", flush=True)
            ready = True
    eng.close()
    return 0


def prefill_ms(eng: LLMEngine, rng: random.Random, prompts: int, prompt_len: int,
               steps: int) -> float:
    """Median ms of `steps` prefill steps of `prompts` fresh prompts each."""
    one = SamplingParams(max_tokens=1, ignore_eos=True)
    times = []
    for k in range(steps):
        for i in range(prompts):
            prompt = [rng.randrange(3, VOCAB) for _ in range(prompt_len)]
            eng.add_request(f"p{time.monotonic_ns()}-{k}-{i}", prompt, one)
        step = eng.step()
        assert step.num_prefill_tokens == prompts * prompt_len, "the prompts must fit one step"
        times.append(step.seconds * 1e3)
        while eng.has_work():
            eng.step()
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--prompt-len", type=positive, default=256, help="tokens a prompt")
    ap.add_argument("--prompts", type=positive, default=1, help="prompts a prefill step")
    ap.add_argument("--batch", type=positive, default=4, help="the neighbour's decode batch")
    ap.add_argument("--steps", type=positive, default=12, help="prefill steps a condition")
    ap.add_argument("--rounds", type=positive, default=2, help="repeats of the two conditions")
    ap.add_argument("--neighbor", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.neighbor:
        return neighbor(args.batch)

    eng = engine(args.prompts * args.prompt_len)
    rng = random.Random(0)
    prefill_ms(eng, rng, args.prompts, args.prompt_len, 3)  # warm up
    print(f"SmolLM2 bf16, 1 thread: median ms of {args.steps} prefill steps of {args.prompts} x "
          f"{args.prompt_len} tokens, alone and beside a decode worker (batch {args.batch})")
    print(f"{'round':>5} {'alone':>8} {'beside':>8} {'ratio':>7}")
    ratios = []
    for r in range(args.rounds):
        alone = prefill_ms(eng, rng, args.prompts, args.prompt_len, args.steps)
        child = subprocess.Popen(
            [sys.executable, __file__, "--neighbor", "--batch", str(args.batch)],
            stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )
        try:
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the neighbour process failed (exit {child.wait()})")
            beside = prefill_ms(eng, rng, args.prompts, args.prompt_len, args.steps)
        finally:
            child.terminate()
            child.wait()
        ratios.append(beside / alone)
        print(f"{r + 1:>5} {alone:>8.1f} {beside:>8.1f} {beside / alone:>7.3f}")
    print(f"median ratio {statistics.median(ratios):.3f}")
    eng.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
