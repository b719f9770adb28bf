"""Prefill side of the KV hand-off: lease a finished prompt's blocks to whichever decode worker
pulls them, and give the blocks back to the engine when the lease is released or expires.

A tensor-parallel worker runs one holder per rank pool (rank r listens on ``port + r``, or on
any free port when ``port`` is 0), all in this process: a prompt is leased on every rank, and
its blocks go back to the engine once every rank's lease has ended.
"""

from __future__ import annotations

import logging
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

from kvtransfer import HolderMetrics, KVHolder, KVTransferParams
from services.engine.engine import LLMEngine, RequestOutput
from services.kv_fingerprint import kv_fingerprint
from services.sharded_kv_params import ShardedKVParams

log = logging.getLogger("pdserve.prefill")


class LeaseGrantError(RuntimeError):
    """The KV holder could not lease a finished prompt's blocks."""


class KVLeases:
    """A KVHolder on each rank's pool, with the bookkeeping from leases back to requests.

    ``release(request_id)`` gives a request's held blocks back to the engine. Every method runs
    on the event loop thread (the holders call ``on_release`` there too).
    """

    def __init__(
        self,
        engine: LLMEngine,
        token: str,
        release: Callable[[str], None],
        *,
        backend: str,
        host: str,
        port: int,
        advertise_host: str,
        lease_seconds: float,
    ):
        self._release = release
        self._holders = [
            KVHolder(
                shard.tensor,
                engine.layout.block_bytes,
                kv_fingerprint(engine, shard),
                token,
                backend=backend,
                host=host,
                port=port + shard.rank if port else 0,
                advertise_host=advertise_host,
                lease_ttl=lease_seconds,
                on_release=self._on_release_callback(shard.rank),
            )
            for shard in engine.kv_shards
        ]
        # A holder reports an ended lease by its block ids. Two held requests could in
        # principle hold the very same blocks (shared prefix); either one's release frees the
        # same blocks, so taking them in grant order (per rank) is exact.
        self._requests_of_blocks: dict[tuple[int, tuple[int, ...]], deque[str]] = defaultdict(deque)
        self._open_leases: dict[str, dict[int, str]] = {}  # request -> rank -> open lease id
        self._granted: dict[str, dict[str, Any] | LeaseGrantError] = {}

    async def start(self) -> None:
        for holder in self._holders:
            await holder.start()

    async def stop(self) -> None:
        """Stop serving reads; every lease still open goes back to the engine."""
        for holder in self._holders:
            await holder.stop()

    @property
    def port(self) -> int:
        """Rank 0's KV port."""
        return self._holders[0].port

    @property
    def ports(self) -> list[int]:
        """Every rank's KV port, in rank order."""
        return [holder.port for holder in self._holders]

    @property
    def metrics(self) -> HolderMetrics:
        """Counters summed over the ranks; ``active_leases`` counts prompts still leased."""
        each = [holder.metrics for holder in self._holders]
        return HolderMetrics(
            bytes_sent=sum(m.bytes_sent for m in each),
            transfers=sum(m.transfers for m in each),
            failures=sum(m.failures for m in each),
            transfer_seconds=sum(m.transfer_seconds for m in each),
            leases_granted=sum(m.leases_granted for m in each),
            leases_released=sum(m.leases_released for m in each),
            leases_expired=sum(m.leases_expired for m in each),
            active_leases=len(self._open_leases),
        )

    def grant(self, output: RequestOutput) -> None:
        """Lease the blocks of a finished prefill on every rank; ``take`` then hands out the
        params."""
        request_id, key = output.request_id, tuple(output.block_ids)
        granted: list[KVTransferParams] = []
        open_leases = self._open_leases[request_id] = {}
        try:
            for rank, holder in enumerate(self._holders):
                params = holder.grant(output.block_ids, output.num_prompt_tokens)
                self._requests_of_blocks[rank, key].append(request_id)
                open_leases[rank] = params.lease_id
                granted.append(params)
        except Exception as exc:  # whatever a holder says, the blocks must go back
            log.error("could not lease the KV of %s: %s", request_id, exc)
            for rank, lease_id in list(open_leases.items()):
                self._holders[rank].release(lease_id)  # the last one gives the blocks back
            if not open_leases and request_id in self._open_leases:
                self._finish(request_id)
            self._granted[request_id] = LeaseGrantError(f"could not lease the KV blocks: {exc}")
            return
        self._granted[request_id] = ShardedKVParams(granted).to_dict()

    def take(self, request_id: str) -> dict[str, Any] | None:
        """The kv_transfer_params granted for ``request_id``; None if its leases already ended
        (aborted), LeaseGrantError if the grant failed."""
        granted = self._granted.pop(request_id, None)
        if isinstance(granted, LeaseGrantError):
            raise granted
        return granted

    def revoke(self, request_id: str) -> bool:
        """Abort of a held request: end its leases now (blocks return once no read uses them)."""
        open_leases = self._open_leases.get(request_id)
        if open_leases is None:
            return False
        ended = [self._holders[rank].release(lease) for rank, lease in list(open_leases.items())]
        return any(ended)

    def _on_release_callback(self, rank: int) -> Callable[[list[int]], None]:
        return lambda block_ids: self._on_release(rank, block_ids)

    def _on_release(self, rank: int, block_ids: list[int]) -> None:
        key = tuple(block_ids)
        waiting = self._requests_of_blocks.get((rank, key))
        if not waiting:
            log.error("a lease on blocks %s ended but no request holds them", block_ids)
            return
        request_id = waiting.popleft()
        if not waiting:
            del self._requests_of_blocks[rank, key]
        open_leases = self._open_leases.get(request_id)
        if open_leases is None:
            return
        open_leases.pop(rank, None)
        if not open_leases:
            self._finish(request_id)

    def _finish(self, request_id: str) -> None:
        """No rank's lease of the request is open anymore: its blocks go back to the engine."""
        self._open_leases.pop(request_id, None)
        self._granted.pop(request_id, None)
        self._release(request_id)
