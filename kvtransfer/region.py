"""A registered memory region: the engine's KV pool seen as equal-sized blocks of bytes.

kvtransfer never interprets the bytes. Block ``i`` is the byte range
``[i * block_bytes, (i + 1) * block_bytes)`` of the pool tensor; a ``Window`` picks the same
sub-range of every block (a tensor-parallel rank's KV heads). Copies are planned as ``Run``s:
adjacent blocks on both sides merge into one run when the window is the whole block, so a
request's KV usually moves as a handful of large transfers rather than one per block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvtransfer.errors import InvalidParams
from kvtransfer.params import check_block_ids


@dataclass(frozen=True)
class Window:
    """The per-block byte window of a fetch: ``length`` bytes from each offset."""

    src_offset: int
    dst_offset: int
    length: int

    def check(self, src_block_bytes: int, dst_block_bytes: int) -> None:
        """Raise InvalidParams unless the window fits inside both sides' blocks."""
        for name, value in (("src_offset", self.src_offset), ("dst_offset", self.dst_offset)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidParams(f"{name} must be a non-negative integer, got {value!r}")
        if not isinstance(self.length, int) or isinstance(self.length, bool) or self.length < 1:
            raise InvalidParams(f"length must be a positive integer, got {self.length!r}")
        if self.src_offset + self.length > src_block_bytes:
            raise InvalidParams(
                f"window src_offset={self.src_offset} length={self.length} overruns the "
                f"source block of {src_block_bytes} bytes"
            )
        if self.dst_offset + self.length > dst_block_bytes:
            raise InvalidParams(
                f"window dst_offset={self.dst_offset} length={self.length} overruns the "
                f"destination block of {dst_block_bytes} bytes"
            )

    def is_whole(self, src_block_bytes: int, dst_block_bytes: int) -> bool:
        """True when the window is every byte of the block on both sides."""
        return (
            self.src_offset == 0
            and self.dst_offset == 0
            and self.length == src_block_bytes == dst_block_bytes
        )


@dataclass(frozen=True)
class Run:
    """``count`` consecutive source blocks copied onto ``count`` consecutive destination blocks."""

    src_block: int
    dst_block: int
    count: int


def plan_runs(src_ids: list[int], dst_ids: list[int], coalesce: bool) -> list[Run]:
    """Pair source with destination blocks, merging neighbours on both sides if ``coalesce``."""
    runs: list[Run] = []
    for src, dst in zip(src_ids, dst_ids, strict=True):
        last = runs[-1] if runs else None
        if (
            coalesce
            and last is not None
            and src == last.src_block + last.count
            and dst == last.dst_block + last.count
        ):
            runs[-1] = Run(last.src_block, last.dst_block, last.count + 1)
        else:
            runs.append(Run(src, dst, 1))
    return runs


class KVRegion:
    """The pool tensor as ``num_blocks`` blocks of ``block_bytes`` bytes, addressable as views."""

    def __init__(self, pool: torch.Tensor, block_bytes: int):
        if not isinstance(pool, torch.Tensor) or not pool.is_contiguous():
            raise InvalidParams("the KV pool must be one contiguous torch tensor")
        if not isinstance(block_bytes, int) or block_bytes < 1:
            raise InvalidParams(f"block_bytes must be a positive integer, got {block_bytes!r}")
        total = pool.numel() * pool.element_size()
        if total == 0 or total % block_bytes:
            raise InvalidParams(
                f"the KV pool holds {total} bytes, not a whole number of {block_bytes}-byte blocks"
            )
        self.pool = pool
        self.block_bytes = block_bytes
        self.num_blocks = total // block_bytes
        # A flat byte view of the same storage: slicing it never copies.
        self.bytes = pool.reshape(-1).view(torch.uint8)

    def check_ids(self, block_ids: object, what: str) -> list[int]:
        """Validate block ids against this pool; raise InvalidParams naming the bad id."""
        return check_block_ids(block_ids, what, self.num_blocks)

    def span(self, first: int, count: int, offset: int, length: int) -> torch.Tensor:
        """A byte view of ``count`` blocks from ``first``: ``length`` bytes at ``offset`` in each.

        Several blocks form one view only with a whole-block window, where they are contiguous.
        """
        if count > 1 and (offset != 0 or length != self.block_bytes):
            raise InvalidParams("only whole-block windows can span several blocks in one run")
        if first < 0 or count < 1 or first + count > self.num_blocks:
            raise InvalidParams(
                f"blocks {first}..{first + count - 1} are outside the pool of {self.num_blocks}"
            )
        if offset < 0 or length < 1 or offset + length > self.block_bytes:
            raise InvalidParams(
                f"window offset={offset} length={length} does not fit a "
                f"{self.block_bytes}-byte block"
            )
        start = first * self.block_bytes + offset
        nbytes = (count - 1) * self.block_bytes + length
        return self.bytes[start : start + nbytes]
