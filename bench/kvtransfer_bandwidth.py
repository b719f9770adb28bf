"""How fast kvtransfer moves KV blocks between two processes on loopback, against baselines.

One run measures, each as the median of several repetitions:

- a local memory copy of the same size (torch ``copy_``, one thread): the ceiling of any copy;
- raw ``ucxx``: one contiguous buffer sent between two processes, no kvtransfer involved;
- kvtransfer ``ucx`` and ``tcp`` pulling the same bytes as SmolLM2 bf16 KV blocks (368,640 bytes:
  16 tokens x 30 layers x K,V x 3 KV heads x 64 dims x 2 bytes), once into adjacent destination
  blocks (coalesced into one transfer) and once into scattered ones (one transfer per block);
- the pull of a 2,048-token prompt (128 blocks, scattered) per backend, next to the engine's
  prefill time for a 2,048-token prompt when ``services.engine`` is importable.

Every fetch is timed end to end in the fetching process: request, data, and lease release.
Example: ``.venv/bin/python bench/kvtransfer_bandwidth.py --quick``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("UCX_WARN_UNUSED_ENV_VARS", "n")

import torch  # noqa: E402

from kvtransfer.region import plan_runs  # noqa: E402

BLOCK_BYTES = 3 * 30 * 2 * 16 * 64 * 2  # SmolLM2-135M, bf16, 16-token blocks
PROMPT_TOKENS = 2048
BLOCK_TOKENS = 16
TOKEN = "bench-token"
FINGERPRINT = {
    "model": "SmolLM2-135M-Instruct",
    "dtype": "bfloat16",
    "block_size": BLOCK_TOKENS,
    "num_layers": 30,
    "num_kv_heads": 3,
    "head_dim": 64,
}


def log(message: str) -> None:
    """Progress goes to stderr so stdout stays the result table."""
    print(message, file=sys.stderr, flush=True)


# ---- the serving process: two holders and a raw ucxx listener over one pool ---------------


async def serve(num_blocks: int) -> None:
    import numpy as np
    import ucxx

    from kvtransfer import KVHolder

    pool = torch.randn((num_blocks, BLOCK_BYTES // 2), dtype=torch.bfloat16)
    raw = pool.reshape(-1).view(torch.uint8).numpy()

    async def raw_handler(endpoint: Any) -> None:
        request = np.empty(1, dtype=np.uint64)
        while True:
            await endpoint.recv(request)
            if request[0] == 0:
                break
            await endpoint.send(raw[: int(request[0])])
        await endpoint.close()

    listener = ucxx.create_listener(raw_handler, 0)
    holders = {
        backend: KVHolder(pool, BLOCK_BYTES, FINGERPRINT, TOKEN, backend=backend)
        for backend in ("ucx", "tcp")
    }
    for holder in holders.values():
        await holder.start()
    print(json.dumps({"raw_port": listener.port}), flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        command = json.loads(line)
        holder = holders[command["backend"]]
        leases = [
            holder.grant(command["block_ids"], BLOCK_TOKENS * len(command["block_ids"])).to_dict()
            for _ in range(command["count"])
        ]
        print(json.dumps(leases), flush=True)
    for holder in holders.values():
        await holder.stop()
    listener.close()


# ---- the measuring process ------------------------------------------------------------------


class Server:
    """The serving process, driven over its stdin/stdout."""

    def __init__(self, num_blocks: int):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(num_blocks)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self._read()
        self.raw_port = int(json.loads(line)["raw_port"])

    def _read(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"serving process exited with code {self.proc.wait()}")
        return line

    def grant(self, backend: str, block_ids: list[int], count: int) -> list[dict[str, Any]]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(
            json.dumps({"backend": backend, "block_ids": block_ids, "count": count}) + "\n"
        )
        self.proc.stdin.flush()
        return json.loads(self._read())

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Probe:
    """One measured path: ``once()`` moves ``nbytes`` and returns the seconds it took."""

    name: str
    nbytes: int
    once: Callable[[], Awaitable[float]]
    note: str = ""
    times: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return statistics.median(self.times)

    @property
    def gbps(self) -> float:
        return self.nbytes / self.seconds / 1e9


def copy_probe(nbytes: int) -> Probe:
    src = torch.ones(nbytes, dtype=torch.uint8)
    dst = torch.empty_like(src)

    async def once() -> float:
        started = time.perf_counter()
        dst.copy_(src)
        return time.perf_counter() - started

    return Probe("local memcpy (torch copy_, 1 thread)", nbytes, once)


async def raw_ucxx_probe(port: int, nbytes: int, stack: AsyncExitStack) -> Probe:
    import numpy as np
    import ucxx

    endpoint = await ucxx.create_endpoint("127.0.0.1", port)

    async def close() -> None:
        await endpoint.send(np.array([0], dtype=np.uint64))
        await endpoint.close()

    stack.push_async_callback(close)
    buffer = np.empty(nbytes, dtype=np.uint8)

    async def once() -> float:
        # Ask, then receive: the same pull direction and round trip as a fetch.
        started = time.perf_counter()
        await endpoint.send(np.array([nbytes], dtype=np.uint64))
        await endpoint.recv(buffer)
        return time.perf_counter() - started

    return Probe("raw ucxx send/recv, one buffer", nbytes, once)


async def fetch_probe(
    name: str,
    server: Server,
    backend: str,
    dst_ids: list[int],
    reps: int,
    stack: AsyncExitStack,
) -> Probe:
    from kvtransfer import KVFetcher

    src_ids = list(range(len(dst_ids)))
    pool = torch.zeros((len(dst_ids), BLOCK_BYTES // 2), dtype=torch.bfloat16)
    fetcher = await stack.enter_async_context(
        KVFetcher(pool, BLOCK_BYTES, FINGERPRINT, TOKEN, backend=backend)
    )
    leases = iter(server.grant(backend, src_ids, reps + 1))
    runs = len(plan_runs(src_ids, dst_ids, coalesce=True))

    async def once() -> float:
        started = time.perf_counter()
        await fetcher.fetch(next(leases), dst_ids, timeout=120)
        return time.perf_counter() - started

    return Probe(name, len(dst_ids) * BLOCK_BYTES, once, f"{runs} transfer(s) per fetch")


def time_engine_prefill(tokens: int, threads: int) -> tuple[float | None, str]:
    """Seconds the engine takes to prefill ``tokens`` prompt tokens, or why it cannot say."""
    try:
        from services.engine.llm import LLM
        from services.engine.sampling_params import SamplingParams
    except ImportError as exc:
        return None, f"engine not available ({exc})"
    llm = LLM("smollm2", dtype="bfloat16", threads=threads, enable_prefix_caching=False)
    greedy_one = SamplingParams(max_tokens=1, temperature=0.0)
    generator = torch.Generator().manual_seed(0)
    vocab = llm.tokenizer.vocab_size
    llm.generate([torch.randint(100, vocab, (64,), generator=generator).tolist()], greedy_one)
    prompt = torch.randint(100, vocab, (tokens,), generator=generator).tolist()
    started = time.perf_counter()
    llm.generate([prompt], greedy_one)
    return time.perf_counter() - started, f"engine prefill (bf16, {threads} threads)"


async def measure(args: argparse.Namespace) -> None:
    num_blocks = max(1, int(args.mib * 2**20) // BLOCK_BYTES)
    prompt_blocks = PROMPT_TOKENS // BLOCK_TOKENS
    nbytes = num_blocks * BLOCK_BYTES
    log(f"starting the serving process ({max(num_blocks, prompt_blocks)} blocks)...")
    server = Server(max(num_blocks, prompt_blocks))
    try:
        async with AsyncExitStack() as stack:
            main_probes = [
                copy_probe(nbytes),
                await raw_ucxx_probe(server.raw_port, nbytes, stack),
            ]
            prompt_probes = []
            adjacent = list(range(num_blocks))
            # Reversed destinations: no two neighbours stay neighbours, so nothing coalesces.
            scattered = adjacent[::-1]
            for backend in args.backends:
                for layout, dst in (("adjacent", adjacent), ("scattered", scattered)):
                    main_probes.append(
                        await fetch_probe(
                            f"kvtransfer {backend}, {layout} blocks",
                            server,
                            backend,
                            dst,
                            args.reps,
                            stack,
                        )
                    )
                prompt_probes.append(
                    await fetch_probe(
                        backend,
                        server,
                        backend,
                        list(range(prompt_blocks))[::-1],
                        args.reps,
                        stack,
                    )
                )
            probes = main_probes + prompt_probes
            log("warming up every path once...")
            for probe in probes:
                await probe.once()
            # Interleave repetitions so a noisy neighbour slows every path alike.
            for rep in range(args.reps):
                log(f"repetition {rep + 1}/{args.reps}...")
                for probe in probes:
                    probe.times.append(await probe.once())
    finally:
        server.stop()
    if args.no_engine:
        prefill, prefill_note = None, "engine not measured (--no-engine)"
    else:
        log(f"engine prefill of a {PROMPT_TOKENS}-token prompt (loads the model)...")
        prefill, prefill_note = time_engine_prefill(PROMPT_TOKENS, args.engine_threads)
    report(main_probes, prompt_probes, num_blocks, prefill, prefill_note, args.reps)


def report(
    main_probes: list[Probe],
    prompt_probes: list[Probe],
    num_blocks: int,
    prefill: float | None,
    prefill_note: str,
    reps: int,
) -> None:
    raw = main_probes[1].seconds
    nbytes = main_probes[0].nbytes
    ucx_env = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("UCX_"))
    print(
        f"\nKV transfer on loopback, two processes: {nbytes / 2**20:.1f} MiB = {num_blocks} "
        f"blocks of {BLOCK_BYTES:,} B (SmolLM2 bf16), median of {reps}"
    )
    print(f"UCX environment: {ucx_env}")
    print(f"{'path':38} {'GB/s':>6} {'ms':>8} {'vs raw ucxx':>12}  note")
    for probe in main_probes:
        ratio = f"{raw / probe.seconds:.0%}" if probe.name.startswith("kvtransfer ucx") else ""
        ms = probe.seconds * 1e3
        print(f"{probe.name:38} {probe.gbps:6.2f} {ms:8.1f} {ratio:>12}  {probe.note}")
    prompt_bytes = prompt_probes[0].nbytes if prompt_probes else 0
    print(
        f"\n{PROMPT_TOKENS}-token prompt: {prompt_bytes // BLOCK_BYTES} scattered blocks, "
        f"{prompt_bytes / 1e6:.1f} MB, median of {reps}"
    )
    print(f"{'backend':10} {'transfer ms':>12} {'prefill ms':>11} {'share':>8}")
    for probe in prompt_probes:
        if prefill is None:
            print(f"{probe.name:10} {probe.seconds * 1e3:12.1f} {'-':>11} {prefill_note:>8}")
        else:
            share = probe.seconds / prefill
            print(f"{probe.name:10} {probe.seconds * 1e3:12.1f} {prefill * 1e3:11.0f} {share:8.1%}")
    if prefill is not None:
        print(f"(share = transfer time / {prefill_note}, measured in this run)")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Figures are loopback measurements on one machine: compare rows of one run.",
    )
    parser.add_argument(
        "--mib", type=float, default=64.0, help="payload per transfer in MiB (default 64)"
    )
    parser.add_argument(
        "--reps",
        type=int,
        default=7,
        help="repetitions per measurement; medians are printed (default 7)",
    )
    parser.add_argument(
        "--backends",
        default="ucx,tcp",
        help="comma-separated kvtransfer backends to measure (default ucx,tcp)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a fast smoke run: 16 MiB, 3 repetitions"
    )
    parser.add_argument(
        "--no-engine",
        action="store_true",
        help="skip loading the engine for the prefill-share column",
    )
    parser.add_argument(
        "--engine-threads",
        type=int,
        default=2,
        help="torch threads for the engine's prefill (default 2)",
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.mib, args.reps = 16.0, 3
    if not args.mib > 0:
        parser.error(f"--mib must be positive, got {args.mib}")
    if args.engine_threads < 1:
        parser.error(f"--engine-threads must be at least 1, got {args.engine_threads}")
    if args.reps < 1:
        parser.error(f"--reps must be at least 1, got {args.reps}")
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in args.backends if b not in ("ucx", "tcp")]
    if unknown or not args.backends:
        parser.error(f"--backends takes ucx and/or tcp, got {args.backends or 'nothing'}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(1)
    try:
        if args.serve is not None:
            asyncio.run(serve(args.serve))
        else:
            asyncio.run(measure(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a benchmark reports any failure as one line, not a traceback
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
