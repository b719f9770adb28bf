"""A prefill-side holder in its own process, driven by JSON lines on stdin (used by the tests).

Its pool is filled from a seed, so the test process can rebuild the exact bytes it expects.
Commands: ``{"cmd": "grant", "block_ids", "num_tokens", "ttl"}``, ``{"cmd": "metrics"}``,
``{"cmd": "stop"}``. Replies and events are JSON lines on stdout: ``ready`` (with the port),
``granted``, ``metrics``, ``error``, ``stopped`` and ``released`` (each on_release call).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import torch

from kvtransfer import KVHolder, KVTransferError


def make_pool(num_blocks: int, block_bytes: int, seed: int, fill: str) -> torch.Tensor:
    """The holder's pool: seeded random bf16, or a constant where content does not matter."""
    shape = (num_blocks, block_bytes // 2)
    if fill == "ones":
        return torch.ones(shape, dtype=torch.bfloat16)
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, dtype=torch.bfloat16, generator=generator)


def emit(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def serve(args: argparse.Namespace) -> None:
    pool = make_pool(args.num_blocks, args.block_bytes, args.seed, args.fill)
    holder = KVHolder(
        pool,
        args.block_bytes,
        json.loads(args.fingerprint),
        args.token,
        backend=args.backend,
        lease_ttl=args.ttl,
        on_release=lambda block_ids: emit("released", block_ids=block_ids),
    )
    await holder.start()
    emit("ready", port=holder.port)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        command = json.loads(line)
        if command["cmd"] == "grant":
            try:
                params = holder.grant(
                    command["block_ids"], command["num_tokens"], command.get("ttl")
                )
            except KVTransferError as exc:
                emit("error", error=type(exc).__name__, message=str(exc))
            else:
                emit("granted", params=params.to_dict())
        elif command["cmd"] == "metrics":
            emit("metrics", metrics=holder.metrics.as_dict())
        elif command["cmd"] == "stop":
            break
    await holder.stop()
    emit("stopped", metrics=holder.metrics.as_dict())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--num-blocks", type=int, required=True)
    parser.add_argument("--block-bytes", type=int, required=True)
    parser.add_argument("--fingerprint", required=True, help="JSON object")
    parser.add_argument("--token", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fill", choices=("random", "ones"), default="random")
    parser.add_argument("--ttl", type=float, default=30.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
