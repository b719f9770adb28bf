"""Tensor-parallel step times on this machine, and what the all-reduce costs per layer.

The model: SmolLM2-135M's shape (30 layers, hidden 576, MLP 1536, vocab 49152, tied
embeddings) with its 576 dimensions split into 8 heads of 72 and 2 KV heads, because
SmolLM2's own 9 heads do not split over 2 ranks; random weights (step times do not depend on
the values). `--model smollm2 --tp 1 3` times the real one.

For each tensor-parallel size (default 1 and 2), in a fresh process, one thread per rank, Gloo
on CPU: one prefill step of a PROMPT-token prompt and decode steps at batch 1 and 16 (context
~256 tokens), medians of several steps. At TP > 1 it also reads how long rank 0 spent inside
all-reduces during those steps (two per layer plus one for the embedding; waiting for the
slower rank included). Last, the all-reduce alone: two Gloo ranks summing the same
[tokens, hidden] activations, no model around it.

    python bench/tp_scaling.py                  # TP 1 and 2, bfloat16
    python bench/tp_scaling.py --tp 1 2 4 --dtype float32 --prompt 1024
    python bench/tp_scaling.py --model smollm2 --tp 1 3

On two CPU cores Gloo does not make steps faster: the split matmuls are small, and every layer
waits for two all-reduces over loopback TCP. The figures show that overhead; on GPUs NCCL
all-reduces take microseconds over NVLink instead.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from child_result import emit, run_child  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DECODE_BATCHES = (1, 16)
DECODE_CONTEXT = 256
REPEATS = 5
ALL_REDUCE_ROWS = (1, 16, 512)
SYNTHETIC = "smollm2-shape-8-heads"


def write_synthetic(directory: Path) -> Path:
    """SmolLM2's shape with 8 query and 2 KV heads of 72, random weights, SmolLM2's tokenizer."""
    import torch
    from safetensors.torch import save_file

    from services.engine.checkpoint import resolve

    smollm2 = resolve("smollm2")
    cfg = smollm2.config.to_hf_dict() | {
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 72,
        "torch_dtype": "bfloat16",
    }
    hidden, inter, d = cfg["hidden_size"], cfg["intermediate_size"], 72
    shapes = {"model.embed_tokens.weight": (cfg["vocab_size"], hidden)}
    shapes["model.norm.weight"] = (hidden,)
    for i in range(cfg["num_hidden_layers"]):
        layer = f"model.layers.{i}"
        shapes |= {
            f"{layer}.input_layernorm.weight": (hidden,),
            f"{layer}.post_attention_layernorm.weight": (hidden,),
            f"{layer}.self_attn.q_proj.weight": (8 * d, hidden),
            f"{layer}.self_attn.k_proj.weight": (2 * d, hidden),
            f"{layer}.self_attn.v_proj.weight": (2 * d, hidden),
            f"{layer}.self_attn.o_proj.weight": (hidden, 8 * d),
            f"{layer}.mlp.gate_proj.weight": (inter, hidden),
            f"{layer}.mlp.up_proj.weight": (inter, hidden),
            f"{layer}.mlp.down_proj.weight": (hidden, inter),
        }
    g = torch.Generator().manual_seed(0)
    tensors = {
        name: torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=g) * 0.02
        for name, shape in shapes.items()
    }
    save_file(
        {k: v.to(torch.bfloat16) for k, v in tensors.items()}, directory / "model.safetensors"
    )
    (directory / "config.json").write_text(json.dumps(cfg))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(smollm2.path / name, directory / name)
    return directory


def run_engine(model: str, tp: int, dtype: str, threads: int, prompt_len: int) -> dict:
    """Step times of one engine at tensor-parallel size ``tp`` (runs in a child process)."""
    import random

    from services.engine.config import EngineConfig
    from services.engine.engine import LLMEngine
    from services.engine.sampling_params import SamplingParams

    engine = LLMEngine(
        EngineConfig(
            model=model,
            dtype=dtype,
            threads=threads,
            tensor_parallel_size=tp,
            kv_cache_memory_gib=0.5,
            enable_prefix_caching=False,
            max_num_batched_tokens=4096,
        )
    )
    rng = random.Random(0)
    vocab = engine.model_config.vocab_size
    layers = engine.model_config.num_layers

    def prompt(n: int) -> list[int]:
        return [rng.randrange(3, vocab) for _ in range(n)]

    def in_all_reduce() -> tuple[float, int]:
        group = engine.group
        return (0.0, 0) if group is None else (group.all_reduce_seconds, group.all_reduces)

    def timed(steps: list[float], reduce_before: tuple[float, int]) -> dict:
        seconds, count = in_all_reduce()
        n = len(steps)
        return {
            "step_ms": statistics.median(steps) * 1000,
            "all_reduce_ms_per_step": (seconds - reduce_before[0]) / n * 1000,
            "all_reduces_per_step": (count - reduce_before[1]) / n,
        }

    try:
        # Warm-up: the first steps build the CPU kernels and the allocator's pools.
        engine.add_request("warm", prompt(300), SamplingParams(max_tokens=4))
        while engine.has_work():
            engine.step()
        results: dict = {"layers": layers, "hidden": engine.model_config.hidden_size}
        steps, before = [], in_all_reduce()
        for i in range(REPEATS):
            engine.add_request(f"p{i}", prompt(prompt_len), SamplingParams(max_tokens=1))
            while engine.has_work():
                steps.append(engine.step().seconds)
        results["prefill"] = timed(steps, before)
        for batch in DECODE_BATCHES:
            params = SamplingParams(max_tokens=REPEATS * 3, temperature=0, ignore_eos=True)
            for i in range(batch):
                engine.add_request(f"d{batch}-{i}", prompt(DECODE_CONTEXT), params)
            while engine.scheduler.waiting or any(
                s.num_uncomputed > 1 for s in engine.scheduler.running
            ):
                engine.step()
            steps, before = [], in_all_reduce()
            while engine.has_work():
                result = engine.step()
                if result.num_decode_tokens == batch and not result.num_prefill_tokens:
                    steps.append(result.seconds)
            results[f"decode_{batch}"] = timed(steps, before)
        return results
    finally:
        engine.close()


def all_reduce_alone(dtype: str, hidden: int, rank: int = 0, port: int = 0) -> dict:
    """Median time of one all-reduce of [rows, hidden] over two Gloo ranks (rank 0 reports)."""
    import torch
    import torch.distributed as dist

    from services.engine.config import DTYPES
    from services.engine.parallel import TPGroup

    torch.set_num_threads(1)
    timeout = datetime.timedelta(seconds=120)
    if rank == 0:
        store = dist.TCPStore("127.0.0.1", 0, 2, True, timeout=timeout, wait_for_workers=False)
        peer = subprocess.Popen(
            [sys.executable, __file__, "--all-reduce-peer", str(store.port), "--dtype", dtype]
            + ["--hidden", str(hidden)]
        )
    else:
        store = dist.TCPStore("127.0.0.1", port, 2, False, timeout=timeout)
    group = TPGroup(store, rank, 2, torch.device("cpu"))
    medians = {}
    for rows in ALL_REDUCE_ROWS:
        x = torch.randn(rows, hidden).to(DTYPES[dtype])
        times = []
        for _ in range(220):
            t0 = time.perf_counter()
            group.all_reduce(x)
            times.append(time.perf_counter() - t0)
        medians[rows] = statistics.median(times[20:]) * 1000
    if rank == 0:
        peer.wait()
    return medians


def run_in_child(args: list[str]) -> dict:
    return run_child([sys.executable, __file__, *args], f"run {args}")


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--model", default=SYNTHETIC, help=f"{SYNTHETIC} (default), smollm2 or a model directory"
    )
    ap.add_argument("--tp", type=int, nargs="+", default=[1, 2], help="sizes to time")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    ap.add_argument("--prompt", type=int, default=512, help="prefill prompt length")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--all-reduce", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--all-reduce-peer", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--hidden", type=int, default=576, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        result = run_engine(args.model, args.child, args.dtype, args.threads, args.prompt)
        emit(result)
        return 0
    if args.all_reduce_peer is not None:
        all_reduce_alone(args.dtype, args.hidden, rank=1, port=args.all_reduce_peer)
        return 0
    if args.all_reduce:
        emit(all_reduce_alone(args.dtype, args.hidden))
        return 0

    print(
        f"{args.model}, {args.dtype}, {args.threads} thread(s) per rank, Gloo on CPU; "
        f"prefill of {args.prompt} tokens, decode at context ~{DECODE_CONTEXT}",
        flush=True,
    )
    runs = {}
    with tempfile.TemporaryDirectory(prefix="tp-scaling-") as tmp:
        model = str(write_synthetic(Path(tmp))) if args.model == SYNTHETIC else args.model
        for tp in args.tp:
            print(f"running TP={tp} ...", flush=True)
            common = ["--model", model, "--dtype", args.dtype, "--threads", str(args.threads)]
            runs[tp] = run_in_child(["--child", str(tp), *common, "--prompt", str(args.prompt)])
    rows = [("prefill", f"prefill step, {args.prompt} tokens")] + [
        (f"decode_{b}", f"decode step, batch {b}") for b in DECODE_BATCHES
    ]
    print(f"\n{'step time (median, ms)':<28}" + "".join(f"{f'TP={tp}':>10}" for tp in runs))
    for key, label in rows:
        print(f"{label:<28}" + "".join(f"{runs[tp][key]['step_ms']:>10.1f}" for tp in runs))
    layers = next(iter(runs.values()))["layers"]
    for tp, run in runs.items():
        if tp == 1:
            continue
        print(f"\nTP={tp}: time rank 0 spends inside all-reduces (waiting for the others included)")
        for key, label in rows:
            r = run[key]
            per_op = r["all_reduce_ms_per_step"] / max(1.0, r["all_reduces_per_step"])
            print(
                f"  {label:<26} {r['all_reduce_ms_per_step']:6.1f} ms of a "
                f"{r['step_ms']:.1f} ms step ({r['all_reduces_per_step']:.0f} all-reduces): "
                f"{per_op:.2f} ms each, {2 * per_op:.2f} ms per layer ({layers} layers)"
            )
    hidden = next(iter(runs.values()))["hidden"]
    alone = run_in_child(["--all-reduce", "--dtype", args.dtype, "--hidden", str(hidden)])
    print(f"\nall-reduce alone, 2 Gloo ranks on loopback, {args.dtype} [rows, {hidden}]:")
    for rows_, ms in alone.items():
        print(f"  {int(rows_):>4} rows: {ms:.3f} ms each, {2 * ms:.3f} ms per layer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
