"""Time the planner on DistServe's chatbot cases and print the plans it picks.

    .venv/bin/python bench/planner_search.py            # OPT-13B and OPT-66B, 4 nodes x 8 A100
    .venv/bin/python bench/planner_search.py --max-pp 8 # also pipeline parallelism (no Helm)

Each case is one `pdserve plan` run on DistServe's A100-80GB profile, a ShareGPT-like workload
(DistServe's ShareGPT set averages 755 prompt and 187 output tokens, CVs about 0.7 and 1.2) and
DistServe's testbed network (25 Gbps per node). The wall time printed is the whole search:
every configuration simulated, the plans combined and the best ones simulated end to end.
"""

from __future__ import annotations

import argparse
import os
import time

from planner.cli import main as plan

WORKLOAD = "synthetic:in=755,out=187,in_cv=0.7,out_cv=1.2"
CASES = [  # model, TTFT s, TPOT s (DistServe's chatbot SLOs)
    ("facebook/opt-13b", 0.25, 0.1),
    ("facebook/opt-66b", 2.5, 0.15),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-pp", type=int, default=1)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    args = parser.parse_args()
    timings = []
    for model, ttft, tpot in CASES:
        argv = ["--model", model, "--gpu", "a100-80g-sxm", "--nodes", str(args.nodes),
                "--gpus-per-node", str(args.gpus_per_node), "--workload", WORKLOAD,
                "--ttft", str(ttft), "--tpot", str(tpot), "--network-gbps", "25",
                "--latency-model", "distserve", "--max-pp", str(args.max_pp),
                "--workers", str(args.workers)]
        print(f"=== pdserve plan {' '.join(argv)}")
        start = time.perf_counter()
        status = plan(argv)
        timings.append((model, time.perf_counter() - start, status))
        print()
    for model, seconds, status in timings:
        print(f"{model}: search took {seconds:.1f} s wall clock "
              f"({args.nodes} x {args.gpus_per_node} GPUs, max pp {args.max_pp}, "
              f"{args.workers} workers), exit status {status}")


if __name__ == "__main__":
    main()
