"""Rank 0's side of tensor parallelism: start the follower ranks, wait until they serve, see
their KV pools, and stop them.

Each follower is a `python -m services.engine.tp_worker` child. On CPU rank 0 makes every
follower's KV pool in shared memory and keeps its own mapping, so the worker can move any
rank's KV itself. The ranks meet through a TCP store on loopback that rank 0 hosts on a free
port. Start-up runs in parallel: every rank loads its shard; rank 0 then sizes the KV pool
(on CUDA from the memory its weights left free) and posts the size in the store; the followers
map their pools and report "ready", or their error, there.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from services.engine.checkpoint import Checkpoint
from services.engine.config import EngineConfig
from services.engine.errors import RankFailedError
from services.engine.kv_cache import KVLayout, shared_memory_fd, shared_memory_tensor
from services.engine.model_runner import ModelRunner
from services.engine.parallel import TPGroup
from services.engine.tp_worker import (
    POOL_KEY,
    FollowerSpec,
    failed_key,
    joined_key,
    ready_key,
)

log = logging.getLogger("pdserve.engine")

# The followers import the same code as rank 0, wherever the import system found it.
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
START_TIMEOUT = 600.0  # a follower loads its shard of a big checkpoint in this time or fails
STOP_TIMEOUT = 30.0
POLL_SECONDS = 0.05


class Followers:
    """The follower ranks 1..N-1 of one engine."""

    def __init__(self, store: dist.TCPStore, procs: list[subprocess.Popen], fds: list[int]):
        self.store = store
        self.procs = procs  # procs[i] is rank i + 1
        self._fds = fds  # their KV pools' shared memory (CPU), until mapped
        self.pools: list[torch.Tensor] = []  # those pools as rank 0 maps them, rank order

    @classmethod
    def start(cls, config: EngineConfig, checkpoint: Checkpoint, device: torch.device) -> Followers:
        """Start ranks 1..N-1 (returns at once; then ``connect``, ``share_pools`` and
        ``wait_ready``)."""
        size = config.tensor_parallel_size
        store = dist.TCPStore(
            "127.0.0.1",
            0,
            size,
            True,
            timeout=datetime.timedelta(seconds=START_TIMEOUT),
            wait_for_workers=False,
        )
        procs: list[subprocess.Popen] = []
        fds: list[int] = []
        path = os.environ.get("PYTHONPATH")
        env = os.environ | {"PYTHONPATH": PACKAGE_ROOT + (os.pathsep + path if path else "")}
        try:
            for rank in range(1, size):
                fd = shared_memory_fd(0) if device.type == "cpu" else None
                if fd is not None:
                    fds.append(fd)
                spec = FollowerSpec(
                    model_name=checkpoint.name,
                    checkpoint_path=str(checkpoint.path),
                    checkpoint_kind=checkpoint.kind,
                    dtype=config.dtype,
                    device=device.type,
                    threads=config.threads,
                    rank=rank,
                    size=size,
                    store_port=store.port,
                    block_size=config.block_size,
                    pool_fd=fd,
                )
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "services.engine.tp_worker", spec.to_json()],
                        stdin=subprocess.PIPE,
                        env=env,
                        pass_fds=() if fd is None else (fd,),
                    )
                )
        except BaseException:
            cls(store, procs, fds).kill()
            raise
        return cls(store, procs, fds)

    def connect(self, device: torch.device) -> TPGroup:
        """Rank 0's end of the group, once every follower has come up to join it."""
        self._wait_for(joined_key, "join the tensor-parallel group")
        return TPGroup(self.store, 0, len(self.procs) + 1, device)

    def share_pools(self, layout: KVLayout, max_positions: int) -> None:
        """Size every follower's KV pool like rank 0's (``layout``) and let them map it."""
        for fd in self._fds:
            os.ftruncate(fd, layout.nbytes)
            self.pools.append(shared_memory_tensor(fd, layout.shape, layout.dtype))
        self._close_fds()
        self.store.set(
            POOL_KEY,
            json.dumps({"num_blocks": layout.num_blocks, "max_positions": max_positions}),
        )

    def wait_ready(self) -> None:
        """Block until every follower has loaded its shard; RankFailedError if one cannot."""
        self._wait_for(ready_key, "load its shard")

    def _wait_for(self, key: Callable[[int], str], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        pending = set(range(1, len(self.procs) + 1))
        while pending:
            for rank in sorted(pending):
                if self.store.check([key(rank)]):
                    pending.discard(rank)
                elif self.store.check([failed_key(rank)]):
                    message = self.store.get(failed_key(rank)).decode(errors="replace")
                    self.kill()
                    raise RankFailedError(f"tensor-parallel rank {rank} failed to start: {message}")
                elif self.procs[rank - 1].poll() is not None:
                    code = self.procs[rank - 1].returncode
                    self.kill()
                    raise RankFailedError(
                        f"tensor-parallel rank {rank} exited with code {code} before it could "
                        f"{what}; its log is above"
                    )
            if pending and time.monotonic() > deadline:
                self.kill()
                raise RankFailedError(
                    f"tensor-parallel ranks {sorted(pending)} did not {what} within "
                    f"{START_TIMEOUT:.0f} s"
                )
            if pending:
                time.sleep(POLL_SECONDS)

    def stop(self, runner: ModelRunner | None) -> None:
        """Tell the followers to exit and wait for them (killing any that do not)."""
        if runner is not None and runner.mid_step:
            self.kill()
            return
        if runner is not None and all(p.poll() is None for p in self.procs):
            try:
                runner.stop_followers()
            except RuntimeError as exc:  # a rank already gone: nothing to tell, just reap
                log.warning("could not tell every tensor-parallel rank to stop: %s", exc)
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in self.procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._close_pipes()

    def kill(self) -> None:
        """End every follower at once (a failed start)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait()
        self._close_pipes()
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def _close_pipes(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None and not proc.stdin.closed:
                proc.stdin.close()
