"""`pdserve profile`: time the real engine over a grid of prefill batches and decode steps on
this machine, fit the planner's latency coefficients, and write a profile `pdserve plan` reads.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

# (prompt lengths of one prefill step), chosen to span the sum and the sum of squares.
PREFILL_GRID = [
    [16],
    [64],
    [128],
    [256],
    [512],
    [1024],
    [2048],
    [128] * 4,
    [256] * 4,
    [64] * 16,
    [512] * 3,
    [1024, 256],
    [256] * 8,
]
DECODE_BATCHES = [1, 2, 4, 8, 16, 32, 64]
DECODE_CONTEXTS = [128, 512, 1024]
MAX_DECODE_CONTEXT_TOKENS = 32768  # skip grid points whose setup would prefill more than this
REPEATS = 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pdserve profile",
        description="Measure this machine's engine step times and fit the planner's latency "
        "model (DistServe's form: prefill a + b*S + c*S^2, decode a + b*T + c*B).",
    )
    p.add_argument("--model", default="smollm2", help="smollm2, a Hugging Face dir or a .gguf")
    p.add_argument(
        "--name", default=None, help="model name to file the profile under (default: --model)"
    )
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads, as each worker will run (default 1)"
    )
    p.add_argument(
        "--tensor-parallel-size",
        type=int,
        default=1,
        help="ranks the engine runs on, as the workers will (default 1)",
    )
    p.add_argument(
        "--kv-cache-memory",
        type=float,
        default=1.0,
        metavar="GIB",
        help="KV pool for the run; also recorded as the instance's KV capacity",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("profile.json"),
        help="profile file to write or update (default profile.json)",
    )
    p.add_argument(
        "--measurements", type=Path, default=None, help="also save the raw step timings here"
    )
    p.add_argument("--quick", action="store_true", help="a smaller grid (about a third)")
    return p


def _random_prompt(rng: random.Random, n: int, vocab: int) -> list[int]:
    return [rng.randrange(3, vocab) for _ in range(n)]


def measure(engine, quick: bool, progress) -> tuple[list, list]:
    """Return (prefill rows, decode rows) as planner measurement rows."""
    from planner.measurements import DecodeRow, PrefillRow
    from services.engine.sampling_params import SamplingParams

    rng = random.Random(0)
    vocab = engine.model_config.vocab_size
    prefill_grid = PREFILL_GRID[::2] if quick else PREFILL_GRID
    prefill_rows = []
    one = SamplingParams(max_tokens=1, ignore_eos=True)
    for lens in prefill_grid:
        times = []
        for rep in range(REPEATS):
            for i, n in enumerate(lens):
                engine.add_request(
                    f"p{len(prefill_rows)}-{rep}-{i}", _random_prompt(rng, n, vocab), one
                )
            step = engine.step()
            assert step.num_prefill_tokens == sum(lens), "the grid must fit one step"
            times.append(step.seconds * 1000)
            while engine.has_work():
                engine.step()
        prefill_rows.append(PrefillRow(list(lens), statistics.median(times)))
        progress.update(1)
    decode_rows = []
    batches = DECODE_BATCHES[::2] if quick else DECODE_BATCHES
    for context in DECODE_CONTEXTS:
        for batch in batches:
            if batch * context > MAX_DECODE_CONTEXT_TOKENS:
                progress.update(1)
                continue
            params = SamplingParams(max_tokens=REPEATS + 2, ignore_eos=True)
            for i in range(batch):
                engine.add_request(
                    f"d{context}-{batch}-{i}", _random_prompt(rng, context, vocab), params
                )
            while engine.scheduler.waiting or any(
                s.num_uncomputed > 1 for s in engine.scheduler.running
            ):
                engine.step()
            times, tokens = [], 0
            while engine.has_work():
                ctx = sum(s.num_computed + 1 for s in engine.scheduler.running)
                step = engine.step()
                if step.num_decode_tokens == batch and not step.num_prefill_tokens:
                    times.append(step.seconds * 1000)
                    tokens = ctx
            if times:
                decode_rows.append(DecodeRow(batch, tokens, statistics.median(times)))
            progress.update(1)
    return prefill_rows, decode_rows


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from tqdm import tqdm

    from planner.errors import PlannerError
    from planner.fit import fit, write_profile
    from planner.measurements import Measurements
    from services.engine.config import EngineConfig
    from services.engine.engine import LLMEngine
    from services.engine.errors import EngineError

    try:
        engine = LLMEngine(
            EngineConfig(
                model=args.model,
                role="both",
                dtype=args.dtype,
                device=args.device,
                threads=args.threads,
                kv_cache_memory_gib=args.kv_cache_memory,
                max_num_batched_tokens=max(sum(g) for g in PREFILL_GRID),
                max_num_seqs=256,
                enable_prefix_caching=False,
                tensor_parallel_size=args.tensor_parallel_size,
            )
        )
    except (EngineError, ValueError) as e:
        print(f"pdserve profile: {e}", file=sys.stderr)
        return 2
    total = len(PREFILL_GRID[::2] if args.quick else PREFILL_GRID) + len(DECODE_CONTEXTS) * len(
        DECODE_BATCHES[::2] if args.quick else DECODE_BATCHES
    )
    try:
        with tqdm(total=total, desc="profiling", unit="point", file=sys.stderr) as progress:
            prefill, decode = measure(engine, args.quick, progress)
    finally:
        engine.close()
    layout = engine.layout
    m = Measurements(
        model=args.name or args.model,
        dtype=args.dtype,
        device=engine.device.type,
        tp=args.tensor_parallel_size,
        threads=args.threads or 0,
        prefill=prefill,
        decode=decode,
        kv_capacity_tokens=layout.num_blocks * layout.block_size,
    )
    try:
        if args.measurements:
            m.save(args.measurements)
        result = fit(m)
        write_profile(args.out, m, result)
    except (PlannerError, OSError) as e:
        print(f"pdserve profile: {e}", file=sys.stderr)
        return 2
    print(result.summary())
    print(
        f"wrote {args.out} (model {m.model!r}, tp {m.tp}); use it with "
        f"`pdserve plan --latency-model {args.out}`"
    )
    return 0
