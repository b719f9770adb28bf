"""The paged KV pool: one contiguous tensor holding every layer's keys and values.

Layout: [num_blocks, num_kv_heads, num_layers, 2 (K, V), block_size, head_dim].

Why block-major: disaggregation ships a request's KV from one process to another, and the unit
it ships is a block. With the block as the outermost dimension, a request's blocks are whole
contiguous byte ranges of one registered buffer, so the KV layer can send them without gathering
(and runs of adjacent blocks coalesce into one transfer). KV heads come next so that a
tensor-parallel rank, which owns a range of KV heads, finds its slice of every block as one
contiguous sub-range. The price is that a layer's keys are strided in memory; attention reads
them through views that index whole [heads, block_size, head_dim] tiles, which stay contiguous.

Under tensor parallelism each rank's pool holds that rank's KV heads only, with the same block
ids everywhere (rank 0's block manager decides). On CPU the followers' pools live in shared
memory that rank 0 maps too, so rank 0 alone moves every rank's KV to and from other workers.
"""

from __future__ import annotations

import math
import mmap
import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KVLayout:
    """The facts a peer must agree on before reading our blocks."""

    num_blocks: int
    num_kv_heads: int
    num_layers: int
    block_size: int
    head_dim: int
    dtype: torch.dtype

    @property
    def block_bytes(self) -> int:
        return self.num_kv_heads * self.head_bytes

    @property
    def head_bytes(self) -> int:
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return self.num_layers * 2 * self.block_size * self.head_dim * itemsize

    @classmethod
    def blocks_for_memory(cls, memory_bytes: int, **shape: object) -> KVLayout:
        probe = cls(num_blocks=1, **shape)  # type: ignore[arg-type]
        return cls(num_blocks=max(1, memory_bytes // probe.block_bytes), **shape)  # type: ignore[arg-type]

    @property
    def shape(self) -> tuple[int, int, int, int, int, int]:
        """The pool tensor's shape."""
        return (
            self.num_blocks,
            self.num_kv_heads,
            self.num_layers,
            2,
            self.block_size,
            self.head_dim,
        )

    @property
    def nbytes(self) -> int:
        return self.num_blocks * self.block_bytes


@dataclass(frozen=True)
class KVShard:
    """One tensor-parallel rank's KV pool as the KV transfer layer sees it: the pool tensor and
    which of the model's KV heads its blocks hold (one rank holds them all)."""

    rank: int
    tensor: torch.Tensor
    kv_head_start: int
    num_kv_heads: int


class KVPool:
    """Owns the pool tensor and hands out per-layer (key, value) views of it.

    ``tensor`` is memory made elsewhere to use as the pool (a shared-memory mapping)."""

    def __init__(self, layout: KVLayout, device: torch.device, tensor: torch.Tensor | None = None):
        self.layout = layout
        shape = layout.shape
        if tensor is not None:
            self.tensor = tensor.view(shape)
        elif device.type == "cpu":
            self.tensor = huge_page_tensor(shape, layout.dtype)
        else:
            self.tensor = torch.zeros(shape, dtype=layout.dtype, device=device)
        # Views, not copies: [num_blocks, kv_heads, block_size, head_dim] per layer.
        self.layers = [
            (self.tensor[:, :, i, 0], self.tensor[:, :, i, 1]) for i in range(layout.num_layers)
        ]


def huge_page_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zeroed CPU tensor in anonymous memory the kernel is asked to back with huge pages.

    Attention reads a sequence's blocks wherever the allocator put them; with 4 KiB pages every
    2 KiB tile of a scattered block costs a TLB miss, which measured as twice the attention time
    once the pool had been churned. Where transparent huge pages are off this is a plain mmap.

    The pages are touched here, at start, not by the first request that writes each block: the
    free list hands out the least recently freed block, so every block is new once, and a prompt
    that first wrote its 256 tokens' KV paid 15 ms of page faults on one thread (seconds in all
    for a 2 GiB pool when the kernel had to compact memory to form huge pages).
    """
    nbytes = max(1, math.prod(shape)) * torch.empty((), dtype=dtype).element_size()
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        buf.madvise(mmap.MADV_HUGEPAGE)
    return torch.frombuffer(buf, dtype=dtype, count=math.prod(shape)).view(shape).zero_()


def shared_memory_fd(nbytes: int) -> int:
    """A file descriptor of ``nbytes`` of zeroed shared memory, for a child to inherit.

    Anonymous (memfd): nothing is left in /dev/shm when the processes exit, however they exit.
    """
    fd = os.memfd_create("pdserve-kv-pool")
    os.ftruncate(fd, max(1, nbytes))
    return fd


def shared_memory_tensor(fd: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A CPU tensor over the shared memory behind ``fd`` (made by ``shared_memory_fd``).

    Huge pages are asked for as in ``huge_page_tensor``; for shared memory the kernel grants
    them only where /sys/kernel/mm/transparent_hugepage/shmem_enabled allows.
    """
    nbytes = max(1, math.prod(shape)) * torch.empty((), dtype=dtype).element_size()
    buf = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        buf.madvise(mmap.MADV_HUGEPAGE)
    return torch.frombuffer(buf, dtype=dtype, count=math.prod(shape)).view(shape)
