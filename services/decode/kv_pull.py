"""Decode side of the KV hand-off: pull a prompt's KV blocks from the prefill worker that holds
them, straight into the blocks the engine allocated, skipping blocks the local prefix cache
already has. Any failure means "recompute": the engine then computes the prompt itself.

Both workers may split the KV heads differently (tensor parallelism). Each local rank owns a
range of heads; it pulls exactly that range from the prefill ranks that hold it, each a
contiguous byte window of every block (the pool puts a block's heads one after the other), all
reads in parallel. One fetcher per local rank pool, all in this process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from kvtransfer import (
    FetcherMetrics,
    InvalidParams,
    KVFetcher,
    KVTransferError,
    KVTransferParams,
)
from services.engine.engine import KVFetch, LLMEngine
from services.engine.kv_cache import KVShard
from services.kv_fingerprint import kv_fingerprint, peer_fingerprint
from services.sharded_kv_params import ShardedKVParams

log = logging.getLogger("pdserve.decode")

PULLED, CACHED, RECOMPUTED = "pulled", "cached", "recomputed"


@dataclass(frozen=True)
class Read:
    """One fetch: heads [head_start, head_start + num_heads) from a prefill rank into ours."""

    local_rank: int
    source_rank: int
    head_start: int
    num_heads: int


def plan_reads(local: list[KVShard], source: ShardedKVParams) -> list[Read]:
    """Which prefill rank each local rank reads which of its heads from (fewest reads: runs of
    heads one prefill rank holds; where ranks replicate a head, the first holder serves it)."""
    holders: list[tuple[int, int, int]] = []  # (first head, count, rank)
    for rank, params in enumerate(source.ranks):
        start, count = (
            params.fingerprint.get("kv_head_start"),
            params.fingerprint.get("kv_head_count"),
        )
        if not isinstance(start, int) or not isinstance(count, int) or count < 1:
            raise InvalidParams(f"prefill rank {rank} does not say which KV heads it holds")
        holders.append((start, count, rank))
    reads: list[Read] = []
    for shard in local:
        for head in range(shard.kv_head_start, shard.kv_head_start + shard.num_kv_heads):
            rank = next((r for s, c, r in holders if s <= head < s + c), None)
            if rank is None:
                raise InvalidParams(f"no prefill rank holds KV head {head}")
            last = reads[-1] if reads else None
            if (
                last is not None
                and (last.local_rank, last.source_rank) == (shard.rank, rank)
                and last.head_start + last.num_heads == head
            ):
                reads[-1] = dataclasses.replace(last, num_heads=last.num_heads + 1)
            else:
                reads.append(Read(shard.rank, rank, head, 1))
    return reads


class KVPuller:
    """Runs one pull per KVFetch and remembers, per request, where its prompt KV came from."""

    def __init__(self, engine: LLMEngine, token: str, *, backend: str, timeout: float):
        self._shards = engine.kv_shards
        self._head_bytes = engine.layout.head_bytes
        self._fingerprints = [kv_fingerprint(engine, shard) for shard in self._shards]
        self._fetchers = [
            KVFetcher(
                shard.tensor,
                engine.layout.block_bytes,
                fingerprint,
                token,
                backend=backend,
            )
            for shard, fingerprint in zip(self._shards, self._fingerprints, strict=True)
        ]
        self._timeout = timeout
        self._outcomes: dict[str, str] = {}
        self.failures = 0  # every failed pull, including params refused before any I/O

    async def close(self) -> None:
        for fetcher in self._fetchers:
            await fetcher.close()

    @property
    def metrics(self) -> FetcherMetrics:
        """Counters summed over the local ranks' fetchers."""
        each = [fetcher.metrics for fetcher in self._fetchers]
        return FetcherMetrics(
            bytes_received=sum(m.bytes_received for m in each),
            transfers=sum(m.transfers for m in each),
            failures=sum(m.failures for m in each),
            transfer_seconds=sum(m.transfer_seconds for m in each),
        )

    def outcome(self, request_id: str) -> str:
        """How the request's prompt KV got here (pulled, cached, recomputed); forgets it."""
        return self._outcomes.pop(request_id, RECOMPUTED)

    def forget(self, request_id: str) -> None:
        self._outcomes.pop(request_id, None)

    async def pull(self, fetch: KVFetch) -> bool:
        """Fill ``fetch.block_ids`` from the holders; False (recompute) if anything fails."""
        try:
            params = ShardedKVParams.from_dict(fetch.kv_source)
            if len(params.block_ids) != len(fetch.block_ids):
                raise KVTransferError(
                    f"the lease holds {len(params.block_ids)} blocks but the prompt needs "
                    f"{len(fetch.block_ids)} here (block sizes differ?)"
                )
            skip = fetch.num_cached_blocks
            if skip >= len(fetch.block_ids):
                # The whole prompt is in the local prefix cache: just let the holders go.
                await self._release_quietly(params.ranks)
                self._outcomes[fetch.request_id] = CACHED
                return True
            await self._read_all(params, fetch.block_ids[skip:], skip)
        except KVTransferError as exc:
            self.failures += 1
            self._outcomes[fetch.request_id] = RECOMPUTED
            log.warning("KV pull for %s failed, recomputing: %s", fetch.request_id, exc)
            return False
        self._outcomes[fetch.request_id] = PULLED
        return True

    async def _read_all(self, params: ShardedKVParams, dst_block_ids: list[int], skip: int) -> None:
        reads = plan_reads(self._shards, params)
        reads_of = Counter(read.source_rank for read in reads)
        ranks = [
            dataclasses.replace(rank, block_ids=rank.block_ids[skip:]) for rank in params.ranks
        ]
        operations = [self._read(read, ranks, reads_of, dst_block_ids) for read in reads]
        await _all(operations)
        # A prefill rank read more than once (or not at all) still holds its lease: end it.
        # The KV is here already; a lease that cannot be ended now expires on its own.
        await self._release_quietly([rank for i, rank in enumerate(ranks) if reads_of[i] != 1])

    async def _read(
        self,
        read: Read,
        ranks: list[KVTransferParams],
        reads_of: Counter[int],
        dst_block_ids: list[int],
    ) -> None:
        source = ranks[read.source_rank]
        src_start = source.fingerprint["kv_head_start"]
        local = self._shards[read.local_rank]
        assert isinstance(src_start, int)
        fingerprint = self._fingerprints[read.local_rank]
        expected = peer_fingerprint(fingerprint, read.source_rank, len(ranks))
        if source.block_bytes != expected["kv_head_count"] * self._head_bytes:
            raise InvalidParams(
                f"prefill rank {read.source_rank} blocks are {source.block_bytes} bytes, not "
                f"{expected['kv_head_count']} heads of {self._head_bytes}"
            )
        await self._fetchers[read.local_rank].fetch(
            source,
            dst_block_ids,
            src_offset=(read.head_start - src_start) * self._head_bytes,
            dst_offset=(read.head_start - local.kv_head_start) * self._head_bytes,
            length=read.num_heads * self._head_bytes,
            timeout=self._timeout,
            release=reads_of[read.source_rank] == 1,
            expect_fingerprint=expected,
        )

    async def _release_quietly(self, ranks: list[KVTransferParams]) -> None:
        await asyncio.gather(*(self._release_one_quietly(rank) for rank in ranks))

    async def _release_one_quietly(self, rank: KVTransferParams) -> None:
        try:
            await self._fetchers[0].release(rank, timeout=self._timeout)
        except KVTransferError as exc:
            log.info("unused lease %s... not released (it expires): %s", rank.lease_id[:8], exc)


async def _all(operations: list[Coroutine[Any, Any, Any]]) -> None:
    """Run every operation concurrently; on the first failure (or a cancellation) stop the rest
    and wait until they have, so nothing writes into the blocks after this returns."""
    tasks = [asyncio.ensure_future(op) for op in operations]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
