"""Where a worker's time went, from its step log (`pdserve worker --step-log`, or
`pdserve up --step-log-dir`): step time by kind and decode batch size, and the cost of a
request joining the decode batch.

    pdserve up --prefill 1 --decode 1 --threads 1 --step-log-dir steps/ &
    pdserve bench run --url http://127.0.0.1:8000 --rate 1.5 ...
    python bench/step_log_summary.py steps/decode-0.jsonl [--beside steps/prefill-0.jsonl]

"Before a join" is the step right before a request joins the decode batch (the next step's
`joined` count; in logs written before that field, the batch growing): on a decode worker that
is the step during which the new request's KV arrived, so its excess over the other steps of
the same batch size is what a KV pull costs the running batch. With --beside another worker's log
(the prefill worker on the same machine), decode steps are also split by whether they ran
while that worker was computing: the excess is what sharing the machine costs a step.
"""

from __future__ import annotations

import argparse
import bisect
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def load(path: Path) -> list[dict]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise SystemExit(f"step_log_summary: cannot read {path}: {exc.strerror}") from exc
    try:
        return [json.loads(line) for line in lines if line.strip()]
    except json.JSONDecodeError as exc:
        raise SystemExit(f"step_log_summary: {path} is not a step log: {exc}") from exc


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("log", type=Path, help="a step log (JSON lines)")
    ap.add_argument("--min-steps", type=int, default=5, help="hide batch sizes seen fewer times")
    ap.add_argument("--beside", type=Path, help="the step log of a worker sharing the machine")
    args = ap.parse_args()
    steps = load(args.log)
    if not steps:
        print(f"{args.log}: no steps")
        return 1
    span = steps[-1]["end"] - (steps[0]["end"] - steps[0]["seconds"])
    busy = sum(s["seconds"] for s in steps)
    print(f"{args.log}: {len(steps)} steps over {span:.1f} s, busy {busy:.1f} s "
          f"({busy / span:.0%})")  # fmt: skip
    prompt = [s["seconds"] * 1e3 for s in steps if s["prefill_tokens"]]
    if prompt:
        print(f"steps with prompt tokens: {len(prompt)}, median {statistics.median(prompt):.1f} "
              f"ms, {sum(prompt) / 1e3:.1f} s in all")  # fmt: skip
    plain: dict[int, list[float]] = defaultdict(list)
    joining: dict[int, list[float]] = defaultdict(list)
    for step, after in zip(steps, steps[1:], strict=False):
        batch = step["decode_tokens"]
        if step["prefill_tokens"] or not batch:
            continue
        joins = after["joined"] if "joined" in after else after["decode_tokens"] > batch
        (joining if joins else plain)[batch].append(step["seconds"] * 1e3)
    print(f"\n{'decode batch':>12} {'steps':>6} {'median ms':>10} {'mean ms':>8}"
          f" {'before a join: steps':>21} {'median ms':>10} {'excess ms':>10}")  # fmt: skip
    for batch in sorted(plain):
        times = plain[batch]
        if len(times) < args.min_steps:
            continue
        med = statistics.median(times)
        row = f"{batch:>12} {len(times):>6} {med:>10.1f} {statistics.mean(times):>8.1f}"
        if joining[batch]:
            jmed = statistics.median(joining[batch])
            row += f" {len(joining[batch]):>21} {jmed:>10.1f} {jmed - med:>+10.1f}"
        print(row)
    if args.beside:
        print_overlap(steps, load(args.beside), args.min_steps)
    return 0


def print_overlap(steps: list[dict], other: list[dict], min_steps: int) -> None:
    """Decode steps alone against those that ran (90% or more) beside the other's steps."""
    busy = sorted((s["end"] - s["seconds"], s["end"]) for s in other)
    starts = [b[0] for b in busy]
    alone: dict[int, list[float]] = defaultdict(list)
    beside: dict[int, list[float]] = defaultdict(list)
    for step in steps:
        batch = step["decode_tokens"]
        if step["prefill_tokens"] or not batch:
            continue
        start, end = step["end"] - step["seconds"], step["end"]
        first = max(bisect.bisect_left(starts, start) - 1, 0)
        shared = 0.0
        for s, e in busy[first:]:
            if s >= end:
                break
            shared += max(0.0, min(end, e) - max(start, s))
        if shared == 0:
            alone[batch].append(step["seconds"] * 1e3)
        elif shared >= 0.9 * step["seconds"]:
            beside[batch].append(step["seconds"] * 1e3)
    print(f"\n{'decode batch':>12} {'alone: steps':>13} {'median ms':>10}"
          f" {'beside the other: steps':>24} {'median ms':>10} {'excess ms':>10}")  # fmt: skip
    for batch in sorted(alone):
        if len(alone[batch]) < min_steps or len(beside[batch]) < min_steps:
            continue
        a, b = statistics.median(alone[batch]), statistics.median(beside[batch])
        print(f"{batch:>12} {len(alone[batch]):>13} {a:>10.1f} {len(beside[batch]):>24} "
              f"{b:>10.1f} {b - a:>+10.1f}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
