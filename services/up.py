"""`pdserve up`: the whole system on one machine — an embedded Redis, N prefill and M decode
workers (or N colocated ones), and the OpenAI-compatible router — with one prefixed log.

Every component runs in its own process group and dies with `up` (see services.child_process),
so Ctrl-C, SIGTERM, or a component that fails to start stops everything and leaves nothing
behind. A fresh internal token is made for each run and handed to the components through the
environment only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.child_process import signal_group, spawn_kwargs
from services.internal_auth import TOKEN_ENV
from services.kv_backend_choice import BACKENDS, resolve_kv_backend
from services.registry import EmbeddedRedis, RedisRegistry, RegistryError

READY_TIMEOUT = 600.0  # model loading can take minutes (downloads, big checkpoints)
STOP_TIMEOUT = 15.0  # per component, before SIGKILL
POLL_SECONDS = 0.2


class UpError(RuntimeError):
    """Something `up` cannot get past: a bad flag, a busy port, a component that failed."""


@dataclass
class Component:
    """One child process and the tail of its output (shown if it fails)."""

    name: str
    command: list[str]
    env: dict[str, str]
    proc: asyncio.subprocess.Process | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=20))
    pump: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.env,
            **spawn_kwargs(),  # type: ignore[arg-type]
        )
        self.pump = asyncio.create_task(self._pump(), name=f"log-{self.name}")

    async def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.tail.append(line)
            say(f"[{self.name}] {line}")

    @property
    def exited(self) -> bool:
        return self.proc is not None and self.proc.returncode is not None

    def failure(self) -> str:
        """The component's own last words, for the error `up` reports."""
        lines = [line for line in self.tail if line.strip()]
        errors = [line for line in lines if "error" in line.lower()]
        last = (errors or lines or [None])[-1]
        code = self.proc.returncode if self.proc else None
        return f"{self.name} exited with code {code}" + (f": {last}" if last else "")

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM its process group, SIGKILL after ``timeout``; then drain its output."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            signal_group(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                say(f"[up] {self.name} did not stop within {timeout:.0f} s; killing it")
        signal_group(self.proc.pid, signal.SIGKILL)  # anything it left in its group
        await self.proc.wait()
        if self.pump is not None:
            await self.pump


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pdserve up",
        description="Run pdserve on this machine: an embedded Redis, prefill and decode workers "
        "(or colocated ones with --both) and the OpenAI-compatible router. Ctrl-C stops it all.",
    )
    p.add_argument(
        "--model",
        default="smollm2",
        help="'smollm2' (built in), a Hugging Face directory or a .gguf file",
    )
    p.add_argument("--served-model-name", help="model name clients use (default: --model)")
    p.add_argument("--host", default="0.0.0.0", help="router bind address (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=8000, help="router port (default 8000)")
    p.add_argument("--prefill", type=_count, metavar="N", help="prefill workers (default 1)")
    p.add_argument("--decode", type=_count, metavar="M", help="decode workers (default 1)")
    p.add_argument(
        "--both",
        type=_count,
        default=0,
        metavar="N",
        help="run N colocated (prefill+decode) workers instead of separate pools",
    )
    p.add_argument("--threads", type=_positive, default=1, help="torch threads per worker")
    p.add_argument(
        "--tensor-parallel-size",
        type=_positive,
        default=1,
        metavar="N",
        help="split each worker's model over N ranks (processes); default 1",
    )
    p.add_argument(
        "--kv-backend",
        choices=BACKENDS,
        default="auto",
        help="KV transfer between the workers: ucx, tcp, or auto (default: ucx on a GPU with "
        "ucxx installed, tcp otherwise, the faster one on a CPU host)",
    )
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="bfloat16")
    p.add_argument(
        "--kv-cache-memory", type=float, metavar="GIB", help="KV pool size of each worker"
    )
    p.add_argument("--max-model-len", type=_positive, help="longest prompt + output, in tokens")
    p.add_argument(
        "--max-num-batched-tokens",
        type=_positive,
        metavar="N",
        help="token budget of one engine step, in every worker (default: the worker's, 4096). "
        "On CPU a prefill worker gains nothing from running several prompts in one step, and "
        "each prompt then waits for the others: a budget of one typical prompt lowers TTFT",
    )
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="an API key the router requires (repeatable; default: open)",
    )
    p.add_argument(
        "--share-cores",
        action="store_true",
        help="pair prefill worker i with decode worker i on the same cores: the decode worker "
        "adds the prefill worker's threads to its own for every step in which no prompt is "
        "being computed, and the prefill worker takes the decode worker's while prompts queue "
        "(see `pdserve worker --share-cores`); needs as many prefill as decode workers",
    )
    p.add_argument(
        "--step-log-dir",
        metavar="DIR",
        help="each worker appends one JSON line per engine step to DIR/<worker>.jsonl "
        "(see `pdserve worker --step-log`)",
    )
    return p


def make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UpError(f"cannot create {path}: {exc.strerror}") from exc


def worker_roles(args: argparse.Namespace) -> list[str]:
    """The role of each worker to start, e.g. ['prefill', 'decode']."""
    if args.both:
        if args.prefill is not None or args.decode is not None:
            raise UpError("use either --both N (colocated) or --prefill/--decode, not both")
        if args.share_cores:
            raise UpError(
                "--share-cores pairs prefill and decode workers; colocated (--both) workers "
                "already share their threads between the phases"
            )
        return ["both"] * args.both
    prefill = 1 if args.prefill is None else args.prefill
    decode = 1 if args.decode is None else args.decode
    if prefill < 1 or decode < 1:
        raise UpError(
            "disaggregated serving needs at least one prefill and one decode worker "
            "(or use --both N for colocated workers)"
        )
    if args.share_cores and prefill != decode:
        raise UpError(
            f"--share-cores pairs each prefill worker with one decode worker: give --prefill "
            f"and --decode the same count (got {prefill} and {decode})"
        )
    if args.share_cores and args.tensor_parallel_size != 1:
        raise UpError("--share-cores shares CPU threads; it does not combine with tensor "
                      "parallelism")
    return ["prefill"] * prefill + ["decode"] * decode


def check_port_free(host: str, port: int) -> None:
    """Fail before loading anything if the router's port is taken."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UpError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def components(args: argparse.Namespace, redis_url: str, token: str,
               kv_backend: str, shared_cores_dir: Path | None = None) -> list[Component]:
    """The worker processes and the router, not started yet; every worker gets `kv_backend`
    (resolved, not `auto`), so that all of them pull and serve KV the same way. With
    `shared_cores_dir`, prefill worker i and decode worker i share the file pair-i in it."""
    python = [sys.executable, "-m", "services.cli"]
    env = os.environ | {TOKEN_ENV: token, "PYTHONUNBUFFERED": "1"}
    env.pop("PDSERVE_API_KEYS", None)
    served = ["--served-model-name", args.served_model_name] if args.served_model_name else []
    optional = []
    if args.kv_cache_memory:
        optional += ["--kv-cache-memory", str(args.kv_cache_memory)]
    if args.max_model_len:
        optional += ["--max-model-len", str(args.max_model_len)]
    if args.max_num_batched_tokens:
        optional += ["--max-num-batched-tokens", str(args.max_num_batched_tokens)]
    out = []
    counts: dict[str, int] = {}
    for role in worker_roles(args):
        index = counts[role] = counts.get(role, -1) + 1
        name = f"{role}-{index}"
        command = [
            *python, "worker", "--role", role, "--model", args.model, *served,
            "--host", "127.0.0.1", "--port", "0", "--kv-port", "0",
            "--advertise-host", "127.0.0.1", "--registry", redis_url, "--worker-id", name,
            "--threads", str(args.threads), "--kv-backend", kv_backend,
            "--tensor-parallel-size", str(args.tensor_parallel_size),
            "--dtype", args.dtype, *optional,
        ]  # fmt: skip
        if args.step_log_dir:
            command += ["--step-log", str(Path(args.step_log_dir) / f"{name}.jsonl")]
        if shared_cores_dir is not None:
            command += ["--share-cores", str(shared_cores_dir / f"pair-{index}")]
        out.append(Component(name, command, env))
    router_env = dict(env)
    if args.api_key:
        router_env["PDSERVE_API_KEYS"] = ",".join(args.api_key)
    router = [
        *python, "router", "--host", args.host, "--port", str(args.port),
        "--registry", redis_url, "--model", args.model, *served, "--dtype", args.dtype,
    ]  # fmt: skip
    if args.max_model_len:
        router += ["--max-model-len", str(args.max_model_len)]
    out.append(Component("router", router, router_env))
    return out


def endpoint(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    return f"http://{shown}:{port}"


class Up:
    """Starts, watches and stops every component of one `pdserve up`."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.redis = EmbeddedRedis()
        self.components: list[Component] = []
        self.stop_requested = asyncio.Event()
        self.signals = 0
        self.scratch: tempfile.TemporaryDirectory[str] | None = None

    def on_signal(self) -> None:
        self.signals += 1
        if self.signals == 1:
            say("[up] stopping (press Ctrl-C again to kill everything at once)")
            self.stop_requested.set()
        else:
            for component in self.components:
                if component.proc is not None:
                    signal_group(component.proc.pid, signal.SIGKILL)

    async def run(self) -> int:
        args = self.args
        check_port_free(args.host, args.port)
        roles = worker_roles(args)
        self.redis.start()
        say(f"[up] redis on {self.redis.url}")
        kv_backend = resolve_kv_backend(args.kv_backend, "auto")
        shared_cores_dir = None
        if args.share_cores:
            self.scratch = tempfile.TemporaryDirectory(prefix="pdserve-up-")
            shared_cores_dir = Path(self.scratch.name)
        self.components = components(
            args, self.redis.url, secrets.token_urlsafe(32), kv_backend, shared_cores_dir
        )
        started = time.monotonic()
        say(
            f"[up] starting {', '.join(f'{roles.count(r)} {r}' for r in dict.fromkeys(roles))} "
            f"worker(s) ({args.model}, {args.dtype}, {args.threads} thread(s) each"
            f"{', decode borrowing idle prefill cores' if args.share_cores else ''}, "
            f"KV over {kv_backend}) and the router"
        )
        for component in self.components:
            await component.start()
        if not await self._wait_ready(started):
            return 0  # stopped by a signal while starting
        name = args.served_model_name or args.model
        say(
            f"[up] ready in {time.monotonic() - started:.1f} s: OpenAI API for {name!r} at "
            f"{endpoint(args.host, args.port)}/v1"
        )
        return await self._supervise()

    async def _wait_ready(self, started: float) -> bool:
        """True once every worker registered and the router is healthy; False if told to stop."""
        workers = {c.name: c for c in self.components if c.name != "router"}
        router_url = endpoint(self.args.host, self.args.port)
        registry = RedisRegistry(self.redis.url)
        ready: set[str] = set()
        try:
            async with httpx.AsyncClient(timeout=2.0) as http:
                while not self.stop_requested.is_set():
                    self._raise_if_exited()
                    for record in await registry.list_workers():
                        if record.worker_id in workers and record.worker_id not in ready:
                            ready.add(record.worker_id)
                            say(
                                f"[up] {record.worker_id} ready at {record.url} "
                                f"({time.monotonic() - started:.1f} s)"
                            )
                    if len(ready) == len(workers) and await _healthy(http, router_url):
                        return True
                    if time.monotonic() - started > READY_TIMEOUT:
                        pending = sorted(set(workers) - ready) or ["router"]
                        raise UpError(f"{', '.join(pending)} not ready after {READY_TIMEOUT} s")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stop_requested.wait(), POLL_SECONDS)
        finally:
            await registry.close()
        return False

    async def _supervise(self) -> int:
        """Run until a signal (exit 0) or until a component dies (exit 1)."""
        waits = {
            asyncio.ensure_future(c.proc.wait()): c for c in self.components if c.proc is not None
        }
        stop = asyncio.ensure_future(self.stop_requested.wait())
        done, _ = await asyncio.wait({stop, *waits}, return_when=asyncio.FIRST_COMPLETED)
        for task in (stop, *waits):
            task.cancel()
        if stop in done:
            return 0
        dead = next(c for c in self.components if c.exited)
        raise UpError(f"{dead.failure()}; stopping everything")

    def _raise_if_exited(self) -> None:
        for component in self.components:
            if component.exited:
                raise UpError(f"{component.failure()}")

    async def shutdown(self) -> None:
        """Router first (no new requests), then the workers together, then Redis."""
        routers = [c for c in self.components if c.name == "router"]
        workers = [c for c in self.components if c.name != "router"]
        for group in (routers, workers):
            await asyncio.gather(*(c.stop() for c in group))
        self.redis.stop()
        if self.scratch is not None:
            self.scratch.cleanup()


async def _healthy(http: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await http.get(f"{url}/health")).status_code == 200
    except httpx.HTTPError:
        return False


async def serve(args: argparse.Namespace) -> int:
    up = Up(args)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, up.on_signal)
    try:
        return await up.run()
    except (UpError, RegistryError) as exc:
        print(f"pdserve up: error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        await up.shutdown()
        say("[up] stopped")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        worker_roles(args)
        if args.step_log_dir:
            make_dir(Path(args.step_log_dir))
    except UpError as exc:
        print(f"pdserve up: error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(serve(args))
