"""Tensor parallelism: which slice of the model each rank holds, whether a size fits, and the
process group through which the ranks compute.

Rank r of N holds query heads [r*H/N, (r+1)*H/N), the KV heads those queries read (its share
of the model's KV heads, or one replicated KV head when N exceeds their number), MLP columns
[r*I/N, (r+1)*I/N) and vocabulary rows [r*ceil(V/N), (r+1)*ceil(V/N)). Column-parallel
projections (q/k/v, gate/up) need no communication; the row-parallel ones (o, down) and the
vocab-parallel embedding end in an all-reduce; the LM head's logit shards are gathered on rank
0, which samples.

The process group is built from the low-level classes rather than `init_process_group`, so a
process may hold several engines (tests do) and nothing global is set up on import.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from services.engine.config import ModelConfig
from services.engine.errors import ParallelConfigError

log = logging.getLogger("pdserve.engine")

# An idle worker's followers wait for the next step plan for as long as nobody sends requests;
# a rank that dies is noticed at once anyway (its connections close).
GROUP_TIMEOUT = datetime.timedelta(days=3650)


def kv_head_range(num_kv_heads: int, rank: int, size: int) -> tuple[int, int]:
    """(first KV head, count) that rank ``rank`` of ``size`` holds (one replicated head when
    there are more ranks than KV heads)."""
    if size <= num_kv_heads:
        per_rank = num_kv_heads // size
        return rank * per_rank, per_rank
    return rank // (size // num_kv_heads), 1


@dataclass(frozen=True)
class TPShard:
    """The slice of the model one rank holds (rank 0 of 1 holds everything)."""

    rank: int
    size: int
    head_start: int
    num_heads: int
    kv_head_start: int
    num_kv_heads: int
    intermediate_start: int
    intermediate_size: int
    vocab_start: int
    vocab_rows: int  # rows of the embedding and LM head shards, the same on every rank
    vocab_valid: int  # of which real vocabulary rows; the rest (last rank only) are zero padding

    @classmethod
    def of(cls, cfg: ModelConfig, rank: int = 0, size: int = 1) -> TPShard:
        heads = cfg.num_heads // size
        kv_start, kv_count = kv_head_range(cfg.num_kv_heads, rank, size)
        inter = cfg.intermediate_size // size
        rows = math.ceil(cfg.vocab_size / size)
        vocab_start = rank * rows
        return cls(
            rank=rank,
            size=size,
            head_start=rank * heads,
            num_heads=heads,
            kv_head_start=kv_start,
            num_kv_heads=kv_count,
            intermediate_start=rank * inter,
            intermediate_size=inter,
            vocab_start=vocab_start,
            vocab_rows=rows,
            vocab_valid=max(0, min(rows, cfg.vocab_size - vocab_start)),
        )


def shape_problem(cfg: ModelConfig, size: int) -> str | None:
    """Why ``size`` ranks cannot split this model evenly, or None if they can."""
    kv = cfg.num_kv_heads
    if cfg.num_heads % size:
        return f"its {cfg.num_heads} attention heads do not split evenly over {size} ranks"
    if size <= kv and kv % size:
        return f"its {kv} KV heads do not split evenly over {size} ranks"
    if size > kv and size % kv:
        return (
            f"{size} ranks cannot share its {kv} KV heads evenly (replicated heads need a multiple)"
        )
    if cfg.intermediate_size % size:
        return f"its MLP width {cfg.intermediate_size} does not split evenly over {size} ranks"
    return None


def check_tensor_parallel(size: int, cfg: ModelConfig, device: torch.device) -> None:
    """Raise ParallelConfigError if ``size`` ranks cannot run this model here; call it before
    loading any weight."""
    if size < 1:
        raise ParallelConfigError(f"tensor-parallel size must be >= 1, got {size}")
    problem = shape_problem(cfg, size)
    if problem is not None:
        fits = [n for n in range(1, cfg.num_heads + 1) if shape_problem(cfg, n) is None]
        raise ParallelConfigError(
            f"tensor-parallel size {size} does not fit {cfg.name or 'the model'}: {problem}; "
            f"sizes that fit: {', '.join(map(str, fits))}"
        )
    if size == 1:
        return
    if device.type == "cuda":
        visible = torch.cuda.device_count()
        if size > visible:
            raise ParallelConfigError(
                f"tensor-parallel size {size} needs {size} GPUs, one per rank, but {visible} "
                f"{'is' if visible == 1 else 'are'} visible (CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})"
            )
    elif device.type == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        if cores is not None and size > cores:
            log.warning(
                "tensor-parallel size %d exceeds the %d CPU cores here: the ranks will share cores",
                size,
                cores,
            )
    else:
        raise ParallelConfigError(f"tensor parallelism runs on cpu or cuda, not on {device.type!r}")


def rank_device(device: torch.device, rank: int) -> torch.device:
    """The device rank ``rank`` computes on: its own GPU on CUDA, the CPU otherwise."""
    return torch.device("cuda", rank) if device.type == "cuda" else device


def _gloo(store: dist.Store, rank: int, size: int) -> dist.ProcessGroupGloo:
    options = dist.ProcessGroupGloo._Options()
    options._devices = [dist.ProcessGroupGloo.create_device(hostname="127.0.0.1")]
    options._timeout = GROUP_TIMEOUT
    return dist.ProcessGroupGloo(store, rank, size, options)


class TPGroup:
    """The ranks of one engine on one host: collectives for the model's activations (NCCL on
    CUDA, Gloo on CPU) and a Gloo channel on which rank 0 sends each step plan."""

    def __init__(self, store: dist.Store, rank: int, size: int, device: torch.device):
        self.rank = rank
        self.size = size
        self._plan = _gloo(dist.PrefixStore("plan", store), rank, size)
        if device.type == "cuda":
            from torch.distributed import ProcessGroupNCCL  # CUDA builds only

            self._model = ProcessGroupNCCL(dist.PrefixStore("model", store), rank, size)
        else:
            self._model = self._plan
        # Time rank 0 spends inside all-reduces (waiting for the slowest rank included): what
        # tensor parallelism costs on top of the split matmuls. Host time, so CPU only.
        self.all_reduce_seconds = 0.0
        self.all_reduces = 0

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum ``x`` over the ranks, in place."""
        t0 = time.perf_counter()
        self._model.allreduce([x]).wait()
        self.all_reduce_seconds += time.perf_counter() - t0
        self.all_reduces += 1
        return x

    def gather(self, x: torch.Tensor) -> list[torch.Tensor] | None:
        """Every rank's ``x`` (same shape everywhere), in rank order, on rank 0; None elsewhere."""
        options = dist.GatherOptions()
        options.rootRank = 0
        if self.rank == 0:
            parts = [torch.empty_like(x) for _ in range(self.size)]
            self._model.gather([parts], [x], options).wait()
            return parts
        self._model.gather([], [x], options).wait()
        return None

    def broadcast_plan(self, x: torch.Tensor) -> torch.Tensor:
        """Rank 0's int64 CPU tensor ``x`` into every rank's ``x`` (same shape everywhere)."""
        options = dist.BroadcastOptions()
        options.rootRank = 0
        self._plan.broadcast([x], options).wait()
        return x
