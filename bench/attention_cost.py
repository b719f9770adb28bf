"""Cost of attention per engine step: the compiled kernels against torch's own paths.

Decode: a step reads every running sequence's keys and values once per layer. With SmolLM2's
shapes (30 layers, 3 KV heads of 64) that is 46 KB per token of context, so at a batch of 8
sequences of 300 tokens a step reads 55 MB of KV beside the 270 MB of weights. The script fills
a KV pool laid out as the engine's (block-major, blocks handed out in a shuffled order as in a
pool that has served a while), then times one step's attention, all 30 layers, for the
compiled kernel (`kernels.decode_attention`) and for the torch fallback it replaces (gather the
blocks, then `scaled_dot_product_attention`), and prints the KV read rate.

Prefill: causal attention of one new prompt of --prompt tokens over all 30 layers, the kernel
(`kernels.prefill_attention`, which reads the prompt's keys and values from the pool) against
`scaled_dot_product_attention` on the new keys and values, the path it replaces.

    python bench/attention_cost.py [--threads 1] [--batch 1,8,16] [--context 300] [--prompt 256]
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
import torch.nn.functional as F  # noqa: E402
from cli_types import positive  # noqa: E402

from services.engine import kernels  # noqa: E402

LAYERS, KV_HEADS, Q_HEADS, HEAD_DIM, BLOCK = 30, 3, 9, 64, 16  # SmolLM2-135M


def batch_sizes(text: str) -> list[int]:
    try:
        values = [int(b) for b in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated integers: {text!r}") from None
    if not values or any(b < 1 for b in values):
        raise argparse.ArgumentTypeError(f"batch sizes must be 1 or more: {text!r}")
    return values


def step_ms(batch: int, context: int, repeats: int, use_kernel: bool) -> float:
    """Median ms of one decode step's attention over all layers."""
    per_seq = -(-context // BLOCK)
    blocks = batch * per_seq
    pool = torch.randn(blocks, KV_HEADS, LAYERS, 2, BLOCK, HEAD_DIM).to(torch.bfloat16)
    layers = [(pool[:, :, i, 0], pool[:, :, i, 1]) for i in range(LAYERS)]
    ids = list(range(blocks))
    random.Random(0).shuffle(ids)
    tables = torch.tensor([ids[b * per_seq:(b + 1) * per_seq] for b in range(batch)])
    lens = torch.full((batch,), context)
    mask = (torch.arange(per_seq * BLOCK)[None] < lens[:, None])[:, None, None, :]
    q = torch.randn(batch, Q_HEADS, HEAD_DIM).to(torch.bfloat16)
    ops = kernels.cpu_ops() if use_kernel else None
    saved = kernels._ops_for
    kernels._ops_for = lambda _: ops  # None: the torch path
    try:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for k, v in layers:
                kernels.decode_attention(q, k, v, tables, lens, mask, HEAD_DIM**-0.5)
            times.append(time.perf_counter() - start)
    finally:
        kernels._ops_for = saved
    return 1e3 * statistics.median(times)


def prefill_ms(prompt: int, repeats: int, use_kernel: bool) -> float | None:
    """Median ms of one prompt's causal attention over all layers (None: no kernel here)."""
    blocks = -(-prompt // BLOCK)
    pool = torch.randn(blocks, KV_HEADS, LAYERS, 2, BLOCK, HEAD_DIM).to(torch.bfloat16)
    table = torch.randperm(blocks, generator=torch.Generator().manual_seed(0))
    rows = torch.randn(prompt, (Q_HEADS + 2 * KV_HEADS) * HEAD_DIM).to(torch.bfloat16)
    q = rows[:, : Q_HEADS * HEAD_DIM].view(prompt, Q_HEADS, HEAD_DIM)  # as the model has it
    k = rows[:, Q_HEADS * HEAD_DIM : (Q_HEADS + KV_HEADS) * HEAD_DIM].view(prompt, KV_HEADS,
                                                                          HEAD_DIM)
    v = rows[:, (Q_HEADS + KV_HEADS) * HEAD_DIM :].view(prompt, KV_HEADS, HEAD_DIM)

    def run(k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor | None:
        if use_kernel:
            return kernels.prefill_attention(q, k_cache, v_cache, table, 0, HEAD_DIM**-0.5)
        return F.scaled_dot_product_attention(
            q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0),
            v.transpose(0, 1).unsqueeze(0), is_causal=True, scale=HEAD_DIM**-0.5,
            enable_gqa=True)

    layers = [(pool[:, :, i, 0], pool[:, :, i, 1]) for i in range(LAYERS)]
    if run(*layers[0]) is None:
        return None
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for k_cache, v_cache in layers:
            run(k_cache, v_cache)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=positive, default=1, help="torch threads (default 1)")
    ap.add_argument("--batch", type=batch_sizes, default=[1, 8, 16],
                    help="sequences in the step (default 1,8,16)")
    ap.add_argument("--context", type=positive, default=300,
                    help="tokens of context per sequence (default 300)")
    ap.add_argument("--prompt", type=positive, default=256,
                    help="tokens of the prompt whose prefill attention is timed (default 256)")
    ap.add_argument("--repeats", type=positive, default=20)
    args = ap.parse_args()
    if kernels.cpu_ops() is None:
        print("the CPU kernels did not build; nothing to compare", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    print(f"SmolLM2 shapes, bf16, {args.threads} thread(s), {args.context} tokens of context "
          f"per sequence; median of {args.repeats} steps (30 layers each)\n")
    print(f"{'batch':>5} {'KV read':>9} {'kernel':>10} {'torch':>10} {'kernel GB/s':>12} "
          f"{'torch / kernel':>15}")
    for batch in args.batch:
        mb = batch * args.context * LAYERS * KV_HEADS * HEAD_DIM * 2 * 2 / 1e6
        kernel = step_ms(batch, args.context, args.repeats, use_kernel=True)
        plain = step_ms(batch, args.context, max(3, args.repeats // 4), use_kernel=False)
        print(f"{batch:>5} {mb:>6.1f} MB {kernel:>7.2f} ms {plain:>7.2f} ms "
              f"{mb / kernel:>12.1f} {plain / kernel:>14.2f}x")
    print()
    kernel = prefill_ms(args.prompt, args.repeats, use_kernel=True)
    plain = prefill_ms(args.prompt, args.repeats, use_kernel=False)
    if kernel is None:
        print("prefill: no compiled kernel on this machine (needs AVX512-BF16)")
    else:
        print(f"prefill of one {args.prompt}-token prompt, 30 layers: kernel {kernel:.2f} ms, "
              f"torch SDPA {plain:.2f} ms, torch / kernel {plain / kernel:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
