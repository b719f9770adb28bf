"""`pdserve plan`: the best prefill/decode parallelism and placement for a model, cluster,
workload and latency SLOs, as a table, a JSON file and Helm values."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from planner.arrivals import unit_gaps
from planner.cluster import Cluster
from planner.errors import PlannerError
from planner.fitted_profile import (
    BUNDLED_PROFILE,
    bundled_data_path,
    load_profile,
    profile_has_model,
)
from planner.goodput import PhaseTask, Sample, Slo
from planner.gpu_catalog import GPUS, get_gpu
from planner.helm_values import render_values
from planner.latency_model import LatencyModel
from planner.memory import EngineLimits, MemoryModel, load_distserve_capacity
from planner.model_catalog import ModelSpec, aliases_of, known_model_names, load_model
from planner.report import explain, plan_json, table
from planner.roofline import Calibration, RooflineLatencyModel
from planner.search import SearchSettings, predict, search
from planner.worker import Context
from planner.workload import load_workload

DISTSERVE_GPU = "a100-80g-sxm"
DEFAULT_REQUESTS = 400

EPILOG = """\
examples:
  pdserve plan --model facebook/opt-13b --gpu a100-80g-sxm --nodes 4 --gpus-per-node 8 \\
      --workload synthetic:in=755,out=187,in_cv=0.7,out_cv=1.2 --ttft 0.25 --tpot 0.1 \\
      --network-gbps 25 --out plan-values.yaml --json plan.json
  pdserve plan --model ./Llama-3.1-8B/ --gpu h100 --nodes 2 --workload sharegpt.json \\
      --ttft 0.5 --tpot 0.05 --rate 40

workloads: synthetic:in=MEAN,out=MEAN[,dist=lognormal|fixed][,cv=C][,in_cv=C][,out_cv=C]
  (lengths in tokens; lognormal by default with cv 0.5), a ShareGPT-format JSON file (first
  human turn as prompt, the answer's length as output), or a JSONL trace with one
  {"timestamp": S, "input_length": N, "output_length": N} per line (the load
  generator's trace format; input_len/output_len are read too).

goodput: the highest request rate at which --attainment of requests meet the TTFT target
(prefill) and the TPOT target (decode), from a discrete-event simulation of pdserve's engine;
reported per GPU so deployments of different sizes compare. A disaggregated configuration's
goodput per GPU mixes prefill and decode instances in the ideal ratio (high affinity) or in the
per-node layout (low affinity); the replicas column is what fits the cluster or the --rate.

recommendation: the disaggregated plan, or colocated workers (prefill and decode in one
engine, chunked prefill) when they serve more than 2% more per GPU (the goodput search's
resolution); --out writes the prefill and decode pools, or prefill and decode at 0 replicas
and the colocated pool. The baseline row is the best colocated deployment under any
scheduling policy, including vLLM's prefill-first, which pdserve's engine does not run.
"""


def _positive(kind: type) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _rates(text: str) -> list[float]:
    try:
        rates = [float(r) for r in text.split(",") if r.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of rates: {text!r}") from exc
    if not rates or min(rates) <= 0:
        raise argparse.ArgumentTypeError("rates must be positive")
    return rates


def _calibration(text: str) -> Calibration:
    fields = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        if key not in Calibration.__dataclass_fields__:
            names = ", ".join(Calibration.__dataclass_fields__)
            raise argparse.ArgumentTypeError(f"unknown calibration {key!r}; use {names}")
        try:
            fields[key] = float(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"calibration {key}: not a number") from exc
    return Calibration(**fields)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pdserve plan",
        description="Search prefill/decode tensor and pipeline parallelism, replica counts and "
                    "placement for the highest goodput per GPU under TTFT/TPOT SLOs; compare "
                    "with colocated serving and recommend whichever serves more; write Helm "
                    "values that deploy the recommendation.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    need = parser.add_argument_group("what to plan")
    need.add_argument("--model", required=True,
                      help="a Hugging Face config.json (or its directory) or a known name: "
                           + ", ".join(known_model_names()))
    need.add_argument("--gpu", required=True, help="GPU: " + ", ".join(GPUS))
    need.add_argument("--nodes", type=int, default=1, help="nodes in the cluster (default 1)")
    need.add_argument("--gpus-per-node", type=int, default=8,
                      help="GPUs per node (default 8)")
    need.add_argument("--workload", required=True, help="synthetic spec, ShareGPT file or "
                      "JSONL trace (see below)")
    need.add_argument("--ttft", type=_positive(float), required=True,
                      help="time-to-first-token target, seconds")
    need.add_argument("--tpot", type=_positive(float), required=True,
                      help="time-per-output-token target, seconds")
    need.add_argument("--attainment", type=_share, default=0.9,
                      help="share of requests that must meet each target (default 0.9)")
    need.add_argument("--rate", type=_positive(float),
                      help="target request rate (req/s) to size replicas for; default: fill "
                           "the cluster")
    how = parser.add_argument_group("search")
    how.add_argument("--affinity", choices=["high", "low", "auto"], default="auto",
                     help="high: instances anywhere, KV over the network; low: prefill and "
                          "decode share nodes, KV over NVLink; auto (default): best of both")
    how.add_argument("--deployment", choices=["auto", "disaggregated", "colocated"],
                     default="auto",
                     help="what to recommend and write as Helm values: auto (default) picks "
                          "disaggregated prefill/decode or colocated workers (each doing both, "
                          "chunked prefill), whichever serves more requests per GPU")
    how.add_argument("--latency-model", default="auto",
                     help="roofline (analytic), distserve (DistServe's A100-80GB fit), a "
                          "profile file from `pdserve profile`, or auto (default: distserve "
                          "when it covers the model and GPU, else roofline)")
    how.add_argument("--calibration", type=_calibration, default=Calibration(),
                     help="roofline calibration, e.g. compute_efficiency=0.6,"
                          "bandwidth_efficiency=0.8,step_overhead_ms=3")
    how.add_argument("--max-tp", type=int, help="largest tensor-parallel degree (default: "
                     "GPUs per node)")
    how.add_argument("--max-pp", type=int, default=1,
                     help="largest pipeline-parallel degree (default 1: pdserve's engine has "
                          "no pipeline parallelism yet; larger values explore what it would "
                          "give but cannot be written as Helm values)")
    how.add_argument("--dtype", help="weights and KV dtype (default: the model's)")
    how.add_argument("--network-gbps", type=_positive(float),
                     help="scale-out bandwidth per node, Gbit/s (default: the GPU's usual "
                          "node; DistServe's testbed had 25)")
    how.add_argument("--num-requests", type=int, default=DEFAULT_REQUESTS,
                     help=f"requests per simulation (default {DEFAULT_REQUESTS}; decode "
                          "simulations repeat them to several times the batch capacity)")
    how.add_argument("--arrival", choices=["poisson", "gamma"], default="poisson",
                     help="arrival process (default poisson)")
    how.add_argument("--burstiness", type=_positive(float), default=1.0,
                     help="coefficient of variation of Gamma inter-arrival gaps (default 1)")
    how.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    how.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                     help="processes simulating in parallel (default: the usable cores)")
    how.add_argument("--tokenizer", help="tokenizer.json to count ShareGPT tokens (default: "
                     "characters / 4)")
    how.add_argument("--predict-at", type=_rates, metavar="R1,R2,...",
                     help="also simulate the best plan at these total rates (req/s); with a "
                          "trace workload, the trace is sent once, rescaled to each rate, as "
                          "`pdserve bench run --dataset TRACE --rate R` sends it")
    engine = parser.add_argument_group("engine (pdserve worker flags of the same names; "
                                       "defaults are the engine's)")
    engine.add_argument("--block-size", type=int, default=16, help="KV tokens per block")
    engine.add_argument("--max-num-seqs", type=int, default=256,
                        help="sequences in one step")
    engine.add_argument("--max-num-batched-tokens", type=int, default=4096,
                        help="token budget of one step (chunked prefill)")
    engine.add_argument("--gpu-memory-utilization", type=_share, default=0.9,
                        help="share of device memory the engine may use")
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, metavar="values.yaml",
                     help="write Helm values for helm/pdserve")
    out.add_argument("--json", type=Path, metavar="plan.json", help="write the plan as JSON")
    return parser


def choose_latency_model(choice: str, model: ModelSpec, cluster: Cluster,
                         calibration: Calibration, names: list[str]) -> LatencyModel:
    """Resolve --latency-model to a model; `names` are what a profile may list the model as."""
    bundled = bundled_data_path(BUNDLED_PROFILE)
    if choice == "roofline":
        return RooflineLatencyModel(model, cluster, calibration)
    if choice == "distserve":
        if cluster.gpu.name != DISTSERVE_GPU:
            raise PlannerError(f"DistServe's profile was measured on {DISTSERVE_GPU}, not "
                               f"{cluster.gpu.name}; use --latency-model roofline")
        return load_profile(bundled, names)
    if choice == "auto":
        if cluster.gpu.name == DISTSERVE_GPU and profile_has_model(bundled, names):
            return load_profile(bundled, names)
        return RooflineLatencyModel(model, cluster, calibration)
    return load_profile(Path(choice), names)


def memory_model(latency: LatencyModel, model: ModelSpec, cluster: Cluster,
                 limits: EngineLimits) -> MemoryModel:
    """Measured KV capacities where the latency source has them, else derived ones."""
    capacity = getattr(latency, "kv_capacity_tokens", None)
    if capacity:
        return MemoryModel(model, cluster.gpu, limits,
                           {(tp, 1): n for tp, n in capacity.items()}, "the profile")
    if getattr(latency, "source", "").endswith(BUNDLED_PROFILE):
        table = load_distserve_capacity(model.name)
        if table:
            return MemoryModel(model, cluster.gpu, limits, table, "DistServe's capacity table")
    return MemoryModel(model, cluster.gpu, limits)


class Progress:
    """A progress bar on stderr over the search's configurations; gone when closed."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def start(self, total: int) -> Callable[[PhaseTask], None]:
        # disable=None: a bar on a terminal, nothing when stderr goes to a file.
        self.bar = tqdm(total=total, desc="searching", unit="config", file=sys.stderr,
                        leave=False, disable=None)

        def tick(task: PhaseTask) -> None:
            assert self.bar is not None
            self.bar.set_postfix_str(task.label(), refresh=False)
            self.bar.update(1)
        return tick

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(args: argparse.Namespace, command: str) -> int:
    if args.out is not None and args.max_pp > 1:
        raise PlannerError("--out writes Helm values, which allow pipelineParallelSize 1 only; "
                           "drop --max-pp or --out")
    if args.num_requests < 20:
        raise PlannerError("--num-requests must be at least 20")
    if args.workers < 1 or args.max_pp < 1 or (args.max_tp is not None and args.max_tp < 1):
        raise PlannerError("--workers, --max-pp and --max-tp must be at least 1")
    if min(args.block_size, args.max_num_seqs, args.max_num_batched_tokens) < 1:
        raise PlannerError("--block-size, --max-num-seqs and --max-num-batched-tokens must be "
                           "at least 1")
    model = load_model(args.model, args.dtype)
    gpu = get_gpu(args.gpu)
    cluster = Cluster(gpu, args.nodes, args.gpus_per_node,
                      args.network_gbps or gpu.node_network_gbps)
    limits = EngineLimits(args.block_size, args.max_num_seqs, args.max_num_batched_tokens,
                          args.gpu_memory_utilization)
    names = [n for n in (model.name, model.hf_id, args.model, *aliases_of(model)) if n]
    latency = choose_latency_model(args.latency_model, model, cluster, args.calibration, names)
    workload = load_workload(args.workload, args.tokenizer)
    requests = workload.sample(args.num_requests, args.seed, model.max_context)
    gaps = requests.unit_gaps or unit_gaps(args.num_requests, args.arrival, args.burstiness,
                                           args.seed)
    slo = Slo(args.ttft, args.tpot, args.attainment)
    context = Context(model, cluster, latency, limits, slo,
                      Sample(requests.prompt_lens, requests.output_lens, gaps))
    settings = SearchSettings(args.affinity, args.max_tp, args.max_pp, args.rate, args.workers,
                              args.deployment)
    progress = Progress()
    try:
        result = search(context, memory_model(latency, model, cluster, limits), settings,
                        progress.start)
    finally:
        progress.close()

    slo_line = (f"TTFT {slo.ttft:g} s and TPOT {slo.tpot:g} s for {slo.attainment:.0%} of "
                f"requests; workload {args.workload}")
    print(f"{model.name} on {cluster.nodes} x {cluster.gpus_per_node} {gpu.description} "
          f"({cluster.network_gbps:g} Gbps per node); {slo_line}")
    print()
    print(table(result))
    print()
    print(explain(result, slo, args.rate))
    predictions = []
    if args.predict_at:
        print()
        if workload.is_trace:
            # The trace once, in order, as `pdserve bench run --dataset TRACE` sends it.
            once = workload.sample(len(workload.pool), args.seed, model.max_context)
            context = replace(context, sample=Sample(once.prompt_lens, once.output_lens,
                                                     once.unit_gaps or []))
            print(f"predicted for the recommended plan, the trace's {len(once)} requests "
                  f"sent once (its own pace is {workload.trace_rate:.4g} req/s):")
        else:
            print("predicted for the recommended plan:")
        for rate in args.predict_at:
            p = predict(context, result.recommended, rate, once=workload.is_trace)
            predictions.append(p.to_json())
            print(f"  at {rate:g} req/s: {p.attainment:.1%} meet both SLOs, p90 TTFT "
                  f"{p.ttft_p90:.3f} s, p90 TPOT {p.tpot_p90:.3f} s")
    if args.json is not None:
        data = plan_json(result, model, cluster, slo, limits, args.workload, args.rate, command)
        if predictions:
            data["predicted_at"] = predictions
        _write(args.json, json.dumps(data, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.out is not None:
        _write(args.out, render_values(result, model, command, slo_line))
        print(f"wrote {args.out}")
    return 0


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        raise PlannerError(f"cannot write {path}: {exc.strerror}") from exc


def main(argv: list[str] | None = None) -> int:
    """Entry point of `pdserve plan`; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    command = shlex.join(["pdserve", "plan", *argv])
    try:
        return run(args, command)
    except PlannerError as exc:
        print(f"pdserve plan: error: {exc}", file=sys.stderr)
        return 1
