"""Cost of the sampler per decode step: ms to sample a batch of SmolLM2-sized logit rows.

At temperature 1 every row of a decode batch goes through the sampler, so its cost per row
adds to every step's time and so to every request's TPOT. Times `sample()` on one thread for
plain temperature sampling and for top-p 0.9 over a peaked and a flat distribution.

    python bench/sampler_cost.py [--threads 1] [--batch 1,8,16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from services.engine.sampler import sample  # noqa: E402
from services.engine.sampling_params import SamplingParams  # noqa: E402
from services.engine.sequence import Sequence  # noqa: E402

VOCAB = 49152
CASES = {  # name: (logit scale, sampling params)
    "greedy": (4.0, {"temperature": 0.0}),
    "temperature 1": (4.0, {"temperature": 1.0}),
    "top_p 0.9, peaked": (8.0, {"temperature": 1.0, "top_p": 0.9}),
    "top_p 0.9, flat": (4.0, {"temperature": 1.0, "top_p": 0.9}),
}


def time_case(batch: int, scale: float, params: dict, repeats: int) -> float:
    """Median ms of one sample() call over `batch` rows."""
    torch.manual_seed(0)
    logits = torch.randn(batch, VOCAB) * scale
    seqs = [
        Sequence(str(i), [1], SamplingParams(max_tokens=8, **params), 0.0) for i in range(batch)
    ]
    sample(logits, seqs)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sample(logits, seqs)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(b) for b in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated integers: {text!r}") from None
    if any(b < 1 for b in sizes):
        raise argparse.ArgumentTypeError(f"batch sizes must be at least 1: {text!r}")
    return sizes


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--batch", type=batch_sizes, default="1,8,16", help="comma-separated batch sizes"
    )
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"sampler, {args.threads} thread(s), vocabulary {VOCAB}: median ms per call")
    print(f"{'case':<20} {'batch':>5} {'ms':>8} {'ms/row':>8}")
    for name, (scale, params) in CASES.items():
        for batch in args.batch:
            ms = time_case(batch, scale, params, args.repeats)
            print(f"{name:<20} {batch:>5} {ms:>8.2f} {ms / batch:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
