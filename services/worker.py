"""`pdserve worker --role prefill|decode|both` (and `pdserve prefill`, `pdserve decode`): one
worker process, an HTTP server around the engine.

The HTTP port is bound before anything else, so a busy port fails at once with a clear message;
the model then loads while /health answers 503, and the worker joins the registry when ready.
SIGTERM or Ctrl-C drains it: it leaves the registry, finishes or cuts open streams within a
few seconds, frees its KV leases and exits 0. A failed start or an engine crash exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from types import FrameType

import uvicorn

from services.internal_auth import MissingTokenError, internal_token_from_env
from services.kv_backend_choice import BACKENDS, resolve_kv_backend
from services.listen_socket import tcp_listener
from services.worker_settings import DEFAULT_MAX_QUEUED_REQUESTS, WorkerSettings

ROLES = ("prefill", "decode", "both")
DRAIN_SECONDS = 5  # how long open streams may run on after a shutdown signal
# Idle router connections stay open this long; longer than the router's own pool keeps them
# (services.router.worker_client.KEEPALIVE_EXPIRY_SECONDS), so the router always lets go first.
KEEP_ALIVE_SECONDS = 60


class UsageError(ValueError):
    """A flag value the worker cannot run with."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port in 0..65535 (0 = any free), got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def build_parser(prog: str, role: str | None) -> argparse.ArgumentParser:
    """The worker's flags (the contracts' common worker flags, plus a few operational ones)."""
    what = f"a {role}" if role else "one"
    p = argparse.ArgumentParser(
        prog=prog,
        description=f"Run {what} pdserve worker: the engine behind a private HTTP API that the "
        "router calls. Secrets come from the environment: PDSERVE_INTERNAL_TOKEN (required).",
    )
    if role is None:
        p.add_argument("--role", choices=ROLES, required=True, help="what this worker computes")
    p.add_argument(
        "--model",
        default="smollm2",
        help="'smollm2' (built in), a Hugging Face directory or a .gguf file",
    )
    p.add_argument("--served-model-name", help="model name clients use (default: --model)")
    p.add_argument("--host", default="0.0.0.0", help="HTTP bind address (default 0.0.0.0)")
    p.add_argument("--port", type=_port, default=8100, help="HTTP port; 0 picks a free one")
    p.add_argument(
        "--kv-port",
        type=_port,
        default=8200,
        help="KV transfer port (prefill); with tensor parallelism rank r listens on PORT + r; "
        "0 = any free",
    )
    p.add_argument(
        "--advertise-host",
        help="address peers use to reach this worker (default: the bind address, or this "
        "host's IP when binding all interfaces); in Kubernetes, the pod IP",
    )
    p.add_argument(
        "--registry",
        default=os.environ.get("PDSERVE_REGISTRY", "memory"),
        help="redis://HOST:PORT/DB, or 'memory' (no discovery); default $PDSERVE_REGISTRY",
    )
    p.add_argument("--worker-id", help="name in the registry (default: ROLE-HOST-PORT)")
    p.add_argument(
        "--tensor-parallel-size",
        type=_positive_int,
        default=1,
        metavar="N",
        help="split the model over N ranks, one process and one device each (CUDA: N visible "
        "GPUs; CPU: the ranks share the cores); N must divide the attention heads (default 1)",
    )
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="bfloat16")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=_positive_int, help="torch threads (CPU)")
    p.add_argument(
        "--kv-backend",
        choices=BACKENDS,
        default="auto",
        help="how decode workers pull KV: ucx (RDMA, NVLink, CUDA IPC) or tcp; auto (default) "
        "picks ucx on a GPU with ucxx installed, tcp otherwise (faster on CPU hosts); give "
        "every worker of a deployment the same one",
    )
    p.add_argument("--block-size", type=_positive_int, default=16, help="tokens per KV block")
    p.add_argument(
        "--kv-cache-memory",
        type=_positive_float,
        metavar="GIB",
        help="KV pool size in GiB of each rank (default: derived from free memory)",
    )
    p.add_argument("--max-num-seqs", type=_positive_int, default=256)
    p.add_argument("--max-num-batched-tokens", type=_positive_int, default=4096)
    p.add_argument("--max-model-len", type=_positive_int)
    p.add_argument(
        "--max-queued-requests",
        type=_positive_int,
        default=DEFAULT_MAX_QUEUED_REQUESTS,
        help="answer 429 once this many requests wait for admission "
        f"(default {DEFAULT_MAX_QUEUED_REQUESTS})",
    )
    p.add_argument(
        "--kv-lease-seconds",
        type=_positive_float,
        default=30.0,
        help="prefill: free a prompt's KV blocks if no decode worker pulls them this soon",
    )
    p.add_argument(
        "--kv-pull-timeout",
        type=_positive_float,
        default=30.0,
        help="decode: give up a KV pull after this many seconds and recompute the prompt",
    )
    p.add_argument(
        "--step-log",
        metavar="PATH",
        help="append one JSON line per engine step to PATH (end time, seconds, prefill and "
        "decode tokens): where the time goes, step by step",
    )
    p.add_argument(
        "--share-cores",
        metavar="PATH",
        help="one host, few cores: a prefill and a decode worker given the same PATH share "
        "their cores. The decode worker runs each step with the prefill worker's threads "
        "added to its own whenever no prompt is being computed; a prompt waits at most one "
        "decode step for them; while prompts queue, the prefill worker takes the decode "
        "worker's threads too and decoding pauses. Give both workers the same --threads; "
        "CPU only",
    )
    p.add_argument("--log-level", choices=("debug", "info", "warning"), default="info")
    return p


def settings_from_args(args: argparse.Namespace, role: str) -> WorkerSettings:
    kv_backend = resolve_kv_backend(args.kv_backend, args.device)
    if kv_backend == "ucx" and importlib.util.find_spec("ucxx") is None:
        raise UsageError(
            "--kv-backend ucx needs the ucxx package (pip install 'pdserve[ucx]'); "
            "or use --kv-backend tcp"
        )
    if args.share_cores:
        if role == "both":
            raise UsageError(
                "--share-cores pairs a prefill worker with a decode worker; a colocated "
                "(--role both) worker already uses all of its threads for both phases"
            )
        if args.threads is None:
            raise UsageError(
                "--share-cores needs --threads (the same on both workers): the decode worker "
                "adds that many threads while it holds the prefill worker's cores"
            )
        if args.tensor_parallel_size != 1 or args.device == "cuda":
            raise UsageError(
                "--share-cores is for CPU workers without tensor parallelism (it shares CPU "
                "threads)"
            )
    last_kv_port = args.kv_port + args.tensor_parallel_size - 1
    if args.kv_port and last_kv_port > 65535:
        raise UsageError(
            f"--kv-port {args.kv_port} with --tensor-parallel-size {args.tensor_parallel_size} "
            f"needs ports up to {last_kv_port}, past 65535; choose a lower --kv-port"
        )
    return WorkerSettings(
        role=role,
        model=args.model,
        served_model_name=args.served_model_name,
        host=args.host,
        port=args.port,
        kv_port=args.kv_port,
        advertise_host=args.advertise_host,
        registry=args.registry,
        worker_id=args.worker_id,
        tensor_parallel_size=args.tensor_parallel_size,
        dtype=args.dtype,
        device=args.device,
        threads=args.threads,
        kv_backend=kv_backend,
        block_size=args.block_size,
        kv_cache_memory_gib=args.kv_cache_memory,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        max_queued_requests=args.max_queued_requests,
        kv_lease_seconds=args.kv_lease_seconds,
        kv_pull_timeout=args.kv_pull_timeout,
        step_log=args.step_log,
        share_cores=args.share_cores,
    )


def bind(host: str, port: int) -> socket.socket:
    """The listening HTTP socket, bound now so a taken port is reported before the model loads."""
    try:
        return tcp_listener(host, port)
    except OSError as exc:
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


class WorkerServer(uvicorn.Server):
    """uvicorn, with a hook when a shutdown signal arrives, and a clean exit afterwards.

    uvicorn re-raises the signal after its graceful shutdown (so the process dies by it);
    a worker that shut down cleanly should exit 0 instead.
    """

    def __init__(self, config: uvicorn.Config, on_signal: Callable[[], None]):
        super().__init__(config)
        self._on_signal = on_signal

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_signal()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


async def serve(settings: WorkerSettings, token: str, sock: socket.socket, prog: str) -> int:
    """Run the worker until a signal or a fatal error; the exit code."""
    from services.worker_app import create_app
    from services.worker_runtime import WorkerRuntime

    loop = asyncio.get_running_loop()
    fatal: list[str] = []
    server: WorkerServer | None = None

    def on_fatal(message: str) -> None:
        fatal.append(message)
        if server is not None:
            server.should_exit = True

    runtime = WorkerRuntime(settings, token, on_fatal)
    config = uvicorn.Config(
        create_app(runtime),
        loop="asyncio",
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=DRAIN_SECONDS,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
    server = WorkerServer(config, lambda: loop.call_soon_threadsafe(runtime.begin_drain))
    await server.serve(sockets=[sock])
    if fatal:
        print(f"{prog}: error: {fatal[0]}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str], role: str | None = None, prog: str = "pdserve worker") -> int:
    args = build_parser(prog, role).parse_args(argv)
    role = role or args.role
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    try:
        settings = settings_from_args(args, role)
        token = internal_token_from_env()
    except (UsageError, MissingTokenError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    try:
        sock = bind(settings.host, settings.port)
    except OSError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    settings.port = sock.getsockname()[1]
    try:
        return asyncio.run(serve(settings, token, sock, prog))
    except KeyboardInterrupt:
        return 0
