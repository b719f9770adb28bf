"""The test side of a holder process: spawn it, grant leases, watch what it hands back.

The layout is SmolLM2's real one (bf16, 16-token blocks, 3 KV heads x 30 layers x K,V x 64
dims = 368,640 bytes per block); pools are kept to a few dozen blocks so tests stay quick.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch

HOLDER_SCRIPT = Path(__file__).with_name("holder_process.py")
TOKEN = "test-internal-token"
HEAD_BYTES = 30 * 2 * 16 * 64 * 2
BLOCK_BYTES = 3 * HEAD_BYTES  # 368,640
NUM_BLOCKS = 64
SEED = 1234
FINGERPRINT: dict[str, str | int] = {
    "model": "SmolLM2-135M-Instruct",
    "dtype": "bfloat16",
    "block_size": 16,
    "num_layers": 30,
    "num_kv_heads": 3,
    "head_dim": 64,
    "tp_rank": 0,
    "tp_size": 1,
    "kv_head_start": 0,
    "kv_head_count": 3,
}


def holder_pool(num_blocks: int = NUM_BLOCKS, block_bytes: int = BLOCK_BYTES) -> torch.Tensor:
    """The exact bytes the holder process fills its pool with (same seed, same generator)."""
    generator = torch.Generator().manual_seed(SEED)
    return torch.randn((num_blocks, block_bytes // 2), dtype=torch.bfloat16, generator=generator)


def sentinel_pool(num_blocks: int = NUM_BLOCKS, block_bytes: int = BLOCK_BYTES) -> torch.Tensor:
    """A destination pool filled with a recognisable value, so stray writes show up."""
    return torch.full((num_blocks, block_bytes // 2), -7.0, dtype=torch.bfloat16)


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-exact comparison (bf16 compared as raw 16-bit words)."""
    return torch.equal(a.view(torch.int16), b.view(torch.int16))


async def wait_for(condition: Any, what: str, timeout: float = 10.0) -> None:
    """Poll ``condition()`` until true, failing with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class HolderProcess:
    """Drives tests/kvtransfer/holder_process.py and records every on_release it reports."""

    def __init__(self, proc: asyncio.subprocess.Process, backend: str):
        self.proc = proc
        self.backend = backend
        self.port = 0
        self.released: list[list[int]] = []
        self.granted = 0
        self._replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def spawn(
        cls,
        backend: str,
        *,
        num_blocks: int = NUM_BLOCKS,
        block_bytes: int = BLOCK_BYTES,
        fingerprint: dict[str, str | int] = FINGERPRINT,
        fill: str = "random",
    ) -> HolderProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HOLDER_SCRIPT),
            f"--backend={backend}",
            f"--num-blocks={num_blocks}",
            f"--block-bytes={block_bytes}",
            f"--fingerprint={json.dumps(fingerprint)}",
            f"--token={TOKEN}",
            f"--seed={SEED}",
            f"--fill={fill}",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        holder = cls(proc, backend)
        holder._reader = asyncio.create_task(holder._read_events())
        ready = await asyncio.wait_for(holder._replies.get(), 60)
        assert ready["event"] == "ready", ready
        holder.port = ready["port"]
        return holder

    async def _read_events(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            event = json.loads(line)
            if event["event"] == "released":
                self.released.append(event["block_ids"])
            else:
                await self._replies.put(event)

    async def _command(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        await self.proc.stdin.drain()
        return await asyncio.wait_for(self._replies.get(), 30)

    async def grant(self, block_ids: list[int], num_tokens: int, ttl: float | None = None) -> dict:
        """Params dict of a new lease on ``block_ids``."""
        reply = await self._command(
            cmd="grant", block_ids=block_ids, num_tokens=num_tokens, ttl=ttl
        )
        assert reply["event"] == "granted", reply
        self.granted += 1
        return reply["params"]

    async def metrics(self) -> dict[str, Any]:
        reply = await self._command(cmd="metrics")
        return reply["metrics"]

    async def stop(self) -> dict[str, Any]:
        """Stop the holder cleanly; returns its final metrics."""
        reply = await self._command(cmd="stop")
        await asyncio.wait_for(self.proc.wait(), 30)
        if self._reader is not None:
            await self._reader
        return reply["metrics"]

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()
