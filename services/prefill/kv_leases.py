"""Prefill side of the KV hand-off: lease a finished prompt's blocks to whichever decode worker
pulls them, and give the blocks back to the engine when the lease is released or expires.
"""

from __future__ import annotations

import logging
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

from kvtransfer import HolderMetrics, KVHolder
from services.engine.engine import LLMEngine, RequestOutput
from services.kv_fingerprint import kv_fingerprint

log = logging.getLogger("pdserve.prefill")


class LeaseGrantError(RuntimeError):
    """The KV holder could not lease a finished prompt's blocks."""


class KVLeases:
    """A KVHolder on the engine's pool, with the bookkeeping from leases back to requests.

    ``release(request_id)`` gives a request's held blocks back to the engine. Every method runs
    on the event loop thread (the holder calls ``on_release`` there too).
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
        self._holder = KVHolder(
            engine.pool.tensor,
            engine.layout.block_bytes,
            kv_fingerprint(engine),
            token,
            backend=backend,
            host=host,
            port=port,
            advertise_host=advertise_host,
            lease_ttl=lease_seconds,
            on_release=self._on_release,
        )
        # The holder reports an ended lease by its block ids. Two held requests could in
        # principle hold the very same blocks (shared prefix); either one's release frees the
        # same blocks, so taking them in grant order is exact.
        self._requests_of_blocks: dict[tuple[int, ...], deque[str]] = defaultdict(deque)
        self._lease_of_request: dict[str, str] = {}
        self._granted: dict[str, dict[str, Any] | LeaseGrantError] = {}

    async def start(self) -> None:
        await self._holder.start()

    async def stop(self) -> None:
        """Stop serving reads; every lease still open goes back to the engine."""
        await self._holder.stop()

    @property
    def port(self) -> int:
        return self._holder.port

    @property
    def metrics(self) -> HolderMetrics:
        return self._holder.metrics

    def grant(self, output: RequestOutput) -> None:
        """Lease the blocks of a finished prefill; ``take`` then hands out the params."""
        request_id, key = output.request_id, tuple(output.block_ids)
        self._requests_of_blocks[key].append(request_id)
        try:
            params = self._holder.grant(output.block_ids, output.num_prompt_tokens)
        except Exception as exc:  # whatever the holder says, the blocks must go back
            self._forget(key, request_id)
            self._release(request_id)
            log.error("could not lease the KV of %s: %s", request_id, exc)
            self._granted[request_id] = LeaseGrantError(f"could not lease the KV blocks: {exc}")
            return
        self._lease_of_request[request_id] = params.lease_id
        self._granted[request_id] = params.to_dict()

    def take(self, request_id: str) -> dict[str, Any] | None:
        """The kv_transfer_params granted for ``request_id``; None if its lease already ended
        (aborted), LeaseGrantError if the grant failed."""
        granted = self._granted.pop(request_id, None)
        if isinstance(granted, LeaseGrantError):
            raise granted
        return granted

    def revoke(self, request_id: str) -> bool:
        """Abort of a held request: end its lease now (blocks return once no read uses them)."""
        lease_id = self._lease_of_request.get(request_id)
        return lease_id is not None and self._holder.release(lease_id)

    def _on_release(self, block_ids: list[int]) -> None:
        key = tuple(block_ids)
        waiting = self._requests_of_blocks.get(key)
        if not waiting:
            log.error("a lease on blocks %s ended but no request holds them", block_ids)
            return
        request_id = waiting[0]
        self._forget(key, request_id)
        self._lease_of_request.pop(request_id, None)
        self._granted.pop(request_id, None)
        self._release(request_id)

    def _forget(self, key: tuple[int, ...], request_id: str) -> None:
        waiting = self._requests_of_blocks[key]
        waiting.remove(request_id)
        if not waiting:
            del self._requests_of_blocks[key]
