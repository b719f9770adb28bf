"""`pdserve profile`: time the real engine over a grid of prefill batches and decode steps on
this machine, fit the planner's latency coefficients, and write a profile `pdserve plan` reads.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

from services.serving_profile import (
    ServingProfileError,
    check_reachable,
    first_token_overhead_ms,
    measure_serving,
    serving_steps,
)

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
    p.add_argument(
        "--serving",
        metavar="URL",
        help="also load a running deployment of the planned shape at URL (e.g. `pdserve up "
        "--prefill 1 --decode 1` with the same --threads) at a few concurrencies and fit the "
        "decode coefficients to its time per output token, and add its first-token overhead "
        "to prefill: what streaming, KV pulls and processes sharing the host cost in service",
    )
    p.add_argument(
        "--serving-model", metavar="NAME", help="model name to request (default: the first "
        "the server lists)"
    )
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


def _fit_serving(m, engine_fit, points, url: str):
    """Decode coefficients from the deployment's time per token; prefill from the engine plus
    the service's first-token overhead. Returns the fit and the profile entry's extra keys."""
    from dataclasses import replace

    from planner.fit import fit
    from planner.fitted_profile import FittedTiming

    served = fit(replace(m, decode=[p.decode_row() for p in points]))
    engine_timing = FittedTiming(engine_fit.coefficients, 1)
    overhead = first_token_overhead_ms(points, engine_timing.prefill_ms)
    a, b, c = engine_fit.coefficients.prefill
    coefficients = replace(served.coefficients, prefill=(a + overhead, b, c))
    result = replace(served, coefficients=coefficients, prefill_error=engine_fit.prefill_error)
    extra = {
        "source": "pdserve profile --serving",
        "serving": {
            "url": url,
            "first_token_overhead_ms": overhead,
            "points": [p.to_json() for p in points],
            "engine_only": engine_fit.coefficients.to_json(),
            "engine_only_decode_fit_error": engine_fit.decode_error.to_json(),
        },
    }
    return result, extra


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from tqdm import tqdm

    from planner.errors import PlannerError
    from planner.fit import fit, write_profile
    from planner.measurements import Measurements
    from services.engine.config import EngineConfig
    from services.engine.engine import LLMEngine
    from services.engine.errors import EngineError

    if args.serving:
        try:
            check_reachable(args.serving, args.serving_model)
        except ServingProfileError as e:
            print(f"pdserve profile: {e}", file=sys.stderr)
            return 2
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
    if args.serving:
        total += serving_steps(args.quick)
    points = []
    try:
        with tqdm(total=total, desc="profiling", unit="point", file=sys.stderr) as progress:
            prefill, decode = measure(engine, args.quick, progress)
            if args.serving:
                points = measure_serving(args.serving, args.serving_model,
                                         engine.model_config.vocab_size, args.quick, progress)
    except ServingProfileError as e:
        print(f"pdserve profile: {e}", file=sys.stderr)
        return 2
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
        extra = None
        if points:
            result, extra = _fit_serving(m, result, points, args.serving)
        write_profile(args.out, m, result, extra)
    except (PlannerError, OSError) as e:
        print(f"pdserve profile: {e}", file=sys.stderr)
        return 2
    print(result.summary())
    if extra:
        serving = extra["serving"]
        print(f"in service at {args.serving}: decode fitted to {len(points)} points "
              f"(time per output token at concurrency "
              f"{', '.join(str(c) for c in sorted({p.concurrency for p in points}))}); "
              f"first-token overhead {serving['first_token_overhead_ms']:.1f} ms added to "
              f"prefill")
    print(
        f"wrote {args.out} (model {m.model!r}, tp {m.tp}); use it with "
        f"`pdserve plan --latency-model {args.out}`"
    )
    return 0
