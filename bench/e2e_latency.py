"""TTFT and TPOT under a fixed Poisson load: disaggregated `pdserve up` against colocated
`pdserve up --both 1` (the same router in front), measured in one run.

    python bench/e2e_latency.py [--rate 2] [--num-prompts 60] [--input-len 256] [--output-len 64]
                                [--kv-backends ucx,tcp,ucx,tcp] [--no-colocated]

Each system is started, loaded with the same seeded workload by `pdserve bench run`, and
stopped; then the percentiles are printed side by side. "1st gap" is the median time between a
request's first and second token: in the disaggregated system that gap holds the hand-off
(routing to a decode worker, the KV pull, joining its batch). `--kv-backends` runs the
disaggregated system once per backend listed, in that order (repeat them to alternate, which
is how to compare them on a noisy machine). Results land in results/e2e/.

On the development machine (2 cores, one thread per worker, `--rate 2.5 --num-prompts 80
--no-colocated --kv-backends ucx,tcp,ucx,tcp`), UCX against TCP, two runs each:

    --seed 0: median TTFT 141, 144 against 135, 133 ms; first gap 127, 135 against 117, 121;
              median TPOT 45, 46 against 45, 45 ms
    --seed 7: median TTFT 157, 152 against 138, 140 ms; first gap 182, 192 against 149, 138;
              median TPOT 63, 71 against 59, 52 ms (a burstier draw, near saturation)

Without RDMA or a GPU, UCX moves KV over loopback TCP through bounce buffers; each hand-off
costs more, and near saturation that compounds. That is why `--kv-backend auto`, the default,
picks tcp on a CPU host.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import ROOT, bench, pdserve_up  # noqa: E402

COLOCATED = ("colocated (1 both)", ["--both", "1"])


def systems(kv_backends: str, colocated: bool) -> list[tuple[str, list[str]]]:
    """(label, `pdserve up` arguments) of each system to run, in order."""
    backends = [b.strip() for b in kv_backends.split(",") if b.strip()]
    bad = [b for b in backends if b not in ("auto", "ucx", "tcp")]
    if bad or not backends:
        raise SystemExit(f"e2e_latency: --kv-backends takes auto, ucx and tcp, got {kv_backends!r}")
    out = []
    for i, backend in enumerate(backends):
        run = f" #{backends[:i + 1].count(backend)}" if backends.count(backend) > 1 else ""
        out.append((f"disaggregated 1+1, KV {backend}{run}", ["--kv-backend", backend]))
    return out + ([COLOCATED] if colocated else [])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", default="2", help="requests per second (Poisson)")
    ap.add_argument("--num-prompts", type=int, default=60)
    ap.add_argument("--input-len", type=int, default=256)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--kv-backends", default="auto",
                    help="comma-separated KV backends (auto, ucx, tcp) to run the disaggregated "
                    "system with, one run each, in order (default auto)")
    ap.add_argument("--no-colocated", action="store_true", help="skip the colocated system")
    ap.add_argument("--seed", type=int, default=0, help="seed of the workload (default 0)")
    ap.add_argument("--port", type=int, default=8300)
    ap.add_argument("--out-dir", type=Path, default=ROOT / "results" / "e2e")
    args = ap.parse_args()

    results = {}
    for i, (name, extra) in enumerate(systems(args.kv_backends, not args.no_colocated)):
        port = args.port + i
        out = args.out_dir / f"system{i}.json"
        print(f"== {name}", flush=True)
        with pdserve_up(port, args.out_dir / f"system{i}.log", "--threads", str(args.threads),
                        *extra):
            bench("run", "--url", f"http://127.0.0.1:{port}", "--rate", args.rate,
                  "--num-prompts", str(args.num_prompts), "--input-len", str(args.input_len),
                  "--output-len", str(args.output_len), "--random-token-ids",
                  "--vocab-size", "49152", "--seed", str(args.seed), "--label", name,
                  "--out", str(out), "--no-progress")
        results[name] = json.loads(out.read_text())

    print(f"\nPoisson {args.rate} req/s, {args.num_prompts} requests, {args.input_len} tokens in, "
          f"{args.output_len} out, {args.threads} thread(s) per worker\n")
    header = f"{'system':<40}" + "".join(f"{h:>10}" for h in (
        "TTFT p50", "p90", "p99", "TPOT p50", "p90", "p99", "1st gap", "failed"))
    print(header + "\n" + "-" * len(header))
    for name, r in results.items():
        cells = [r[f"{stat}_{metric}_ms"] for metric in ("ttft", "tpot")
                 for stat in ("median", "p90", "p99")]
        cells.append(1e3 * statistics.median(
            q["itl"][0] for q in r["requests"] if q["success"] and q["itl"]))
        print(f"{name:<40}" + "".join(f"{c:>8.0f}ms" for c in cells) + f"{r['failed']:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
