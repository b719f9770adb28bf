"""Cost of decode attention per engine step: the compiled kernel against torch's own path.

A decode step reads every running sequence's keys and values once per layer. With SmolLM2's
shapes (30 layers, 3 KV heads of 64) that is 46 KB per token of context, so at a batch of 8
sequences of 300 tokens a step reads 55 MB of KV beside the 270 MB of weights. This script
fills a KV pool laid out as the engine's (block-major, blocks handed out in a shuffled order
as in a pool that has served a while), then times one step's attention, all 30 layers, for
the compiled kernel (`kernels.decode_attention`) and for the torch fallback it replaces
(gather the blocks, then `scaled_dot_product_attention`), and prints the KV read rate.

    python bench/decode_attention_cost.py [--threads 1] [--batch 1,8,16] [--context 300]
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=positive, default=1, help="torch threads (default 1)")
    ap.add_argument("--batch", type=batch_sizes, default=[1, 8, 16],
                    help="sequences in the step (default 1,8,16)")
    ap.add_argument("--context", type=positive, default=300,
                    help="tokens of context per sequence (default 300)")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
