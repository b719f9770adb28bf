"""`pdserve bench`: benchmark an OpenAI-compatible server, search its goodput, plot results."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
from pathlib import Path
from typing import NoReturn

from loadgen import runner
from loadgen.arrivals import KINDS, ArrivalError, Arrivals, rescaled
from loadgen.client import Endpoint, EndpointError, StreamClient, base_url
from loadgen.goodput import SearchError, SearchSettings, search
from loadgen.metrics import SLO, Summary, summarize
from loadgen.preflight import Checked, PreflightError, check
from loadgen.report import goodput_table, point_line, run_table
from loadgen.result import (
    GoodputResult,
    ResultError,
    RunConfig,
    RunResult,
    read_result,
    write_result,
)
from loadgen.tokenizer import Tokenizer, TokenizerError, load_tokenizer
from loadgen.workload import (
    DEFAULT_VOCAB_SIZE,
    DISTRIBUTIONS,
    Lengths,
    Request,
    WorkloadError,
    dataset_kind,
    load_dataset,
    synthetic,
)

PROG = "pdserve bench"
DEFAULT_NUM_PROMPTS = 200
DEFAULT_INPUT_LEN = 256
DEFAULT_OUTPUT_LEN = 128


class UsageError(Exception):
    """The command line asks for something impossible."""


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


class _Parser(argparse.ArgumentParser):
    """Reports errors as exceptions, so `main` returns a code instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            print(message, file=sys.stderr, end="")
        raise _Exit(status)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if math.isnan(value):
        raise argparse.ArgumentTypeError("must be a number (got nan)")
    return value


def _rate(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive (got {text})")
    return value


def _positive(text: str) -> float:
    value = _rate(text)
    if math.isinf(value):
        raise argparse.ArgumentTypeError("must be finite")
    return value


def _non_negative(text: str) -> float:
    value = _float(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be zero or positive (got {text})")
    return value


def _fraction(text: str) -> float:
    value = _float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], e.g. 0.9 (got {text})")
    return value


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"temperature\": 0}'")
    return value


def _add_server_options(p: argparse.ArgumentParser) -> None:
    server = p.add_argument_group("server")
    server.add_argument("--url", required=True, help="base URL of the server, e.g. "
                        "http://localhost:8000 (a trailing /v1 is fine)")
    server.add_argument("--model", help="model name to request (default: the first one the "
                        "server lists at /v1/models)")
    server.add_argument("--endpoint", choices=("completions", "chat"), default="completions",
                        help="/v1/completions or /v1/chat/completions (default: completions)")
    server.add_argument("--api-key", metavar="KEY", default=os.environ.get("OPENAI_API_KEY"),
                        help="bearer token (default: $OPENAI_API_KEY)")
    server.add_argument("--timeout", type=_positive, default=300.0, metavar="SEC",
                        help="seconds a whole request may take before it counts as failed "
                        "(default: 300)")
    server.add_argument("--no-ignore-eos", action="store_true",
                        help="let the model stop at EOS instead of sending ignore_eos: true "
                        "(dropped by itself for servers that reject it)")
    server.add_argument("--extra-body", type=_json_object, default={}, metavar="JSON",
                        help="JSON object merged into every request body, e.g. "
                        "'{\"temperature\": 0}'")


def _add_workload_options(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("workload")
    data.add_argument("--dataset", default="synthetic", metavar="synthetic|PATH",
                      help="'synthetic', a ShareGPT JSON file (first turns; output length "
                      "from the recorded answer), or a JSONL trace with one object a line: "
                      "timestamp (s) or timestamp_ms, prompt or input_length, output_length "
                      "(default: synthetic)")
    data.add_argument("--num-prompts", type=_positive_int, metavar="N",
                      help=f"number of requests (default: {DEFAULT_NUM_PROMPTS}; every line "
                      "of a trace)")
    data.add_argument("--input-len", type=_positive_int, default=DEFAULT_INPUT_LEN, metavar="N",
                      help=f"mean prompt length in tokens (default: {DEFAULT_INPUT_LEN})")
    data.add_argument("--output-len", type=_positive_int, metavar="N",
                      help=f"mean output length in tokens, sent as max_tokens (default: "
                      f"{DEFAULT_OUTPUT_LEN}; for a dataset, its own lengths)")
    for which in ("input", "output"):
        data.add_argument(f"--{which}-dist", choices=DISTRIBUTIONS, default="fixed",
                          help=f"distribution of {which} lengths (default: fixed)")
        data.add_argument(f"--{which}-spread", type=_non_negative, default=0.0, metavar="X",
                          help=f"uniform: {which} lengths within mean*(1 +- spread); "
                          "lognormal: coefficient of variation (default: 0)")
    data.add_argument("--tokenizer", metavar="PATH",
                      help="tokenizer.json (or its directory) to cut prompts to exactly "
                      "--input-len tokens; without it lengths are estimated for a typical BPE "
                      "vocabulary")
    data.add_argument("--random-token-ids", action="store_true",
                      help="send prompts as lists of random token ids (completions only; "
                      "synthetic, or a JSONL trace of input_length rows)")
    data.add_argument("--vocab-size", type=_positive_int, metavar="N",
                      help="id range for --random-token-ids without --tokenizer "
                      f"(default: {DEFAULT_VOCAB_SIZE})")
    data.add_argument("--seed", type=int, default=0, metavar="N",
                      help="seed of prompts, lengths and arrival times (default: 0)")



def _add_arrival_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--arrival", choices=KINDS, default="poisson",
                       help="arrival process of open-loop runs (default: poisson)")
    group.add_argument("--cv", type=_positive, metavar="X", help="coefficient of variation "
                       "of the gaps of --arrival gamma: above 1 is burstier than Poisson")


def _add_output_options(p: argparse.ArgumentParser) -> None:
    load = p.add_argument_group("SLO")
    load.add_argument("--slo-ttft", type=_positive, metavar="SEC",
                      help="time-to-first-token target in seconds")
    load.add_argument("--slo-tpot", type=_positive, metavar="SEC",
                      help="time-per-output-token target in seconds")

    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, metavar="PATH",
                     help="write the result as JSON to this file")
    out.add_argument("--label", default="", metavar="NAME",
                     help="name of this result in tables and plots")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")


def _parser() -> _Parser:
    parser = _Parser(
        prog=PROG,
        description="Measure TTFT, TPOT, SLO attainment and goodput of any OpenAI-compatible "
        "server (pdserve, vLLM, SGLang, Dynamo).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Raw text keeps each example on one line, ready to copy.
    raw = argparse.RawDescriptionHelpFormatter

    run = sub.add_parser(
        "run", help="run one benchmark and report latency, throughput and SLO attainment",
        formatter_class=raw,
        description="Send a workload at a request rate (open loop) or a concurrency (closed\n"
        "loop) and report TTFT, TPOT, ITL and E2E latency (mean, median, p90, p99),\n"
        "throughput and, with SLOs, their attainment.",
        epilog="example:\n  pdserve bench run --url http://localhost:8000 --rate 4 "
        "--input-len 512 --output-len 128 --slo-ttft 0.5 --slo-tpot 0.05 --out result.json",
    )
    _add_server_options(run)
    pace_group = run.add_argument_group("pace (--rate or --concurrency)")
    pace = pace_group.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=_rate, metavar="R", help="requests per second, or 'inf' "
                      "for all at once (a trace keeps its own pace unless given)")
    pace.add_argument("--concurrency", type=_positive_int, metavar="C",
                      help="closed loop: keep this many requests in flight")
    _add_arrival_options(pace_group)
    _add_workload_options(run)
    _add_output_options(run)
    run.set_defaults(handler=_cmd_run)

    goodput = sub.add_parser(
        "goodput", help="find the highest request rate that meets the SLO attainment",
        formatter_class=raw,
        description="Find the goodput: the highest request rate at which at least --attainment\n"
        "of the requests meet every SLO given. Brackets (doubling or halving from\n"
        "--start-rate), then bisects; every point is a full run of --num-prompts requests.",
        epilog="example:\n  pdserve bench goodput --url http://localhost:8000 --slo-ttft 0.5 "
        "--slo-tpot 0.05 --attainment 0.9 --gpus 2 --out goodput.json",
    )
    _add_server_options(goodput)
    search_opts = goodput.add_argument_group("search")
    search_opts.add_argument("--attainment", type=_fraction, default=0.9, metavar="X",
                             help="share of requests that must meet the SLOs (default: 0.9)")
    search_opts.add_argument("--gpus", type=_positive_int, metavar="N",
                             help="GPUs the server uses, to report goodput per GPU")
    search_opts.add_argument("--start-rate", type=_positive, default=1.0, metavar="R",
                             help="first rate tried, req/s (default: 1)")
    search_opts.add_argument("--min-rate", type=_positive, metavar="R",
                             help="give up below this rate (default: start-rate / 16)")
    search_opts.add_argument("--max-rate", type=_positive, metavar="R",
                             help="stop doubling above this rate (default: start-rate * 1024)")
    search_opts.add_argument("--tolerance", type=_positive, default=0.05, metavar="X",
                             help="stop when the bracket is narrower than this share of its "
                             "upper end (default: 0.05)")
    _add_arrival_options(search_opts)
    _add_workload_options(goodput)
    _add_output_options(goodput)
    goodput.set_defaults(handler=_cmd_goodput)

    plot = sub.add_parser(
        "plot", help="draw PNG plots of result files",
        formatter_class=raw,
        description="Latency CDFs of run results (several overlay; results of\n"
        "`vllm bench serve --save-result --save-detailed` too); SLO attainment against\n"
        "request rate of goodput results, or of several runs at different rates.",
        epilog="example:\n  pdserve bench plot vllm.json pdserve.json --out-dir plots",
    )
    plot.add_argument("results", nargs="+", type=Path, help="result JSON files")
    plot.add_argument("--out-dir", type=Path, metavar="DIR",
                      help="directory for the PNGs (default: the first result's directory)")
    plot.set_defaults(handler=_cmd_plot)
    return parser


def _slo(args: argparse.Namespace) -> SLO:
    return SLO(args.slo_ttft, args.slo_tpot)


def _checked_options(args: argparse.Namespace) -> str:
    """Validate what argparse cannot; returns the dataset kind (synthetic, sharegpt, trace)."""
    if args.cv is not None and args.arrival != "gamma":
        raise UsageError("--cv sets the burstiness of --arrival gamma only")
    if args.random_token_ids and args.endpoint == "chat":
        raise UsageError("--random-token-ids needs --endpoint completions (chat takes text)")
    base_url(args.url)
    if args.dataset == "synthetic":
        Lengths(args.input_len, args.input_dist, args.input_spread)
        Lengths(args.output_len or DEFAULT_OUTPUT_LEN, args.output_dist, args.output_spread)
        return "synthetic"
    kind = dataset_kind(Path(args.dataset))
    if args.random_token_ids and kind != "trace":
        raise UsageError("--random-token-ids works with --dataset synthetic or a JSONL trace "
                         "of input_length rows, not a ShareGPT file")
    return kind


def _requests(
    args: argparse.Namespace, tokenizer: Tokenizer, seed: int | None = None
) -> list[Request]:
    seed = args.seed if seed is None else seed
    if args.dataset != "synthetic":
        return load_dataset(Path(args.dataset), args.num_prompts, tokenizer, seed, args.output_len,
                            token_ids=args.random_token_ids,
                            vocab_size=args.vocab_size or DEFAULT_VOCAB_SIZE)
    return synthetic(
        args.num_prompts or DEFAULT_NUM_PROMPTS,
        Lengths(args.input_len, args.input_dist, args.input_spread),
        Lengths(args.output_len or DEFAULT_OUTPUT_LEN, args.output_dist, args.output_spread),
        tokenizer,
        seed,
        token_ids=args.random_token_ids,
        vocab_size=args.vocab_size or DEFAULT_VOCAB_SIZE,
    )


def _send_times(
    args: argparse.Namespace, requests: list[Request], rate: float | None
) -> list[float]:
    """Open-loop send times: the trace's own (rescaled to `rate` if given), else the process."""
    trace_times = [r.arrival for r in requests if r.arrival is not None]
    if len(trace_times) == len(requests):
        return trace_times if rate is None else rescaled(trace_times, rate)
    return Arrivals(rate, args.arrival, args.cv or 1.0).times(len(requests), args.seed)


def _config(
    args: argparse.Namespace,
    endpoint: Endpoint,
    tokenizer: Tokenizer,
    n: int,
    rate: float | None,
    is_trace: bool,
) -> RunConfig:
    concurrency = getattr(args, "concurrency", None)
    arrival = None if concurrency else ("trace" if is_trace else args.arrival)
    burstiness = None
    if arrival in KINDS:
        burstiness = Arrivals(rate or 1.0, arrival, args.cv or 1.0).burstiness
    return RunConfig(
        base_url=endpoint.base_url,
        model_id=endpoint.model,
        endpoint=endpoint.kind,
        dataset=args.dataset,
        num_prompts=n,
        seed=args.seed,
        request_rate=rate,
        arrival=arrival,
        burstiness=burstiness,
        max_concurrency=concurrency,
        slo=_slo(args),
        tokenizer_id=tokenizer.name,
        ignore_eos=endpoint.ignore_eos,
        label=args.label,
    )


async def _preflight(args: argparse.Namespace) -> Checked:
    endpoint = Endpoint(
        base_url=base_url(args.url),
        model=args.model or "",
        kind=args.endpoint,
        api_key=args.api_key,
        ignore_eos=not args.no_ignore_eos,
        extra_body=args.extra_body,
        timeout=args.timeout,
    )
    checked = await check(endpoint)
    for note in checked.notes:
        print(f"{PROG}: {note}", file=sys.stderr)
    return checked


def _write(result: RunResult | GoodputResult, path: Path | None) -> None:
    if path is not None:
        write_result(result, path)
        print(f"{PROG}: wrote {path}", file=sys.stderr)


def _cmd_run(args: argparse.Namespace) -> int:
    kind = _checked_options(args)
    if args.rate is None and args.concurrency is None and kind != "trace":
        raise UsageError("give --rate R (requests/s) or --concurrency C")
    tokenizer = load_tokenizer(args.tokenizer)
    return asyncio.run(_run(args, tokenizer, is_trace=kind == "trace"))


async def _run(args: argparse.Namespace, tokenizer: Tokenizer, is_trace: bool) -> int:
    checked = await _preflight(args)
    requests = _requests(args, tokenizer)
    times = None if args.concurrency else _send_times(args, requests, args.rate)
    async with StreamClient(checked.endpoint) as client:
        records, duration = await runner.run(
            client, requests, times=times, concurrency=args.concurrency,
            progress=not args.no_progress,
        )
    config = _config(args, checked.endpoint, tokenizer, len(requests), args.rate, is_trace)
    result = RunResult(config, summarize(records, duration, _slo(args)), records)
    print(run_table(result))
    _write(result, args.out)
    if result.summary.completed == 0:
        first = next(iter(result.summary.error_counts), "")
        print(f"{PROG}: every request failed, e.g. {first}", file=sys.stderr)
        return 1
    return 0


def _cmd_goodput(args: argparse.Namespace) -> int:
    kind = _checked_options(args)
    if not _slo(args).given:
        raise UsageError("goodput needs an SLO: give --slo-ttft SEC and/or --slo-tpot SEC")
    settings = SearchSettings(
        target=args.attainment,
        start_rate=args.start_rate,
        min_rate=args.min_rate or args.start_rate / 16,
        max_rate=args.max_rate or args.start_rate * 1024,
        tolerance=args.tolerance,
    )
    tokenizer = load_tokenizer(args.tokenizer)
    return asyncio.run(_goodput(args, tokenizer, settings, is_trace=kind == "trace"))


async def _goodput(
    args: argparse.Namespace, tokenizer: Tokenizer, settings: SearchSettings, is_trace: bool
) -> int:
    checked = await _preflight(args)
    requests = _requests(args, tokenizer)
    slo = _slo(args)
    points = 0
    async with StreamClient(checked.endpoint) as client:

        async def run_at(rate: float) -> Summary:
            # Fresh prompts at every point: with the same ones, a server's prefix cache would
            # answer every point after the first from cache and its goodput would be inflated.
            nonlocal points
            requests = _requests(args, tokenizer, seed=args.seed + points)
            points += 1
            records, duration = await runner.run(
                client, requests, times=_send_times(args, requests, rate),
                progress=not args.no_progress, desc=f"{rate:.3g} req/s",
            )
            return summarize(records, duration, slo)

        outcome = await search(
            run_at, settings, on_point=lambda p: print(point_line(p), file=sys.stderr)
        )
    config = _config(args, checked.endpoint, tokenizer, len(requests), None, is_trace)
    result = GoodputResult(
        config, args.attainment, outcome.goodput, outcome.points, args.gpus, outcome.note
    )
    print(goodput_table(result))
    _write(result, args.out)
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    # matplotlib takes a second to import; only plotting needs it.
    from loadgen.plots import plot_results

    named = []
    for path in args.results:
        result = read_result(path)
        named.append((result.config.label or path.stem, result))
    out_dir = args.out_dir or args.results[0].parent
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResultError(f"cannot create {out_dir}: {exc}") from exc
    prefix = f"{args.results[0].stem}_" if len(args.results) == 1 else ""
    written = plot_results(named, out_dir, prefix)
    if not written:
        raise ResultError("nothing to plot: no run result has per-request rows")
    for path in written:
        print(path)
    return 0


def main(argv: list[str]) -> int:
    """Entry point of `pdserve bench`; returns the process exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        return args.handler(args)
    except _Exit as done:
        return done.code
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except (
        WorkloadError, TokenizerError, ArrivalError, EndpointError, PreflightError,
        SearchError, ResultError,
    ) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
