"""Decode side of the KV hand-off: pull a prompt's KV blocks from the prefill worker that holds
them, straight into the blocks the engine allocated, skipping blocks the local prefix cache
already has. Any failure means "recompute": the engine then computes the prompt itself.
"""

from __future__ import annotations

import dataclasses
import logging

from kvtransfer import FetcherMetrics, KVFetcher, KVTransferError, KVTransferParams
from services.engine.engine import KVFetch, LLMEngine
from services.kv_fingerprint import kv_fingerprint

log = logging.getLogger("pdserve.decode")

PULLED, CACHED, RECOMPUTED = "pulled", "cached", "recomputed"


class KVPuller:
    """Runs one pull per KVFetch and remembers, per request, where its prompt KV came from."""

    def __init__(self, engine: LLMEngine, token: str, *, backend: str, timeout: float):
        self._fetcher = KVFetcher(
            engine.pool.tensor,
            engine.layout.block_bytes,
            kv_fingerprint(engine),
            token,
            backend=backend,
        )
        self._timeout = timeout
        self._outcomes: dict[str, str] = {}
        self.failures = 0  # every failed pull, including params refused before any I/O

    async def close(self) -> None:
        await self._fetcher.close()

    @property
    def metrics(self) -> FetcherMetrics:
        return self._fetcher.metrics

    def outcome(self, request_id: str) -> str:
        """How the request's prompt KV got here (pulled, cached, recomputed); forgets it."""
        return self._outcomes.pop(request_id, RECOMPUTED)

    def forget(self, request_id: str) -> None:
        self._outcomes.pop(request_id, None)

    async def pull(self, fetch: KVFetch) -> bool:
        """Fill ``fetch.block_ids`` from the holder; False (recompute) if anything fails."""
        try:
            params = KVTransferParams.from_dict(fetch.kv_source)
            if len(params.block_ids) != len(fetch.block_ids):
                raise KVTransferError(
                    f"the lease holds {len(params.block_ids)} blocks but the prompt needs "
                    f"{len(fetch.block_ids)} here (block sizes differ?)"
                )
            skip = fetch.num_cached_blocks
            if skip >= len(fetch.block_ids):
                # The whole prompt is in the local prefix cache: just let the holder go.
                await self._release_quietly(params)
                self._outcomes[fetch.request_id] = CACHED
                return True
            await self._fetcher.fetch(
                dataclasses.replace(params, block_ids=params.block_ids[skip:]),
                fetch.block_ids[skip:],
                timeout=self._timeout,
            )
        except KVTransferError as exc:
            self.failures += 1
            self._outcomes[fetch.request_id] = RECOMPUTED
            log.warning("KV pull for %s failed, recomputing: %s", fetch.request_id, exc)
            return False
        self._outcomes[fetch.request_id] = PULLED
        return True

    async def _release_quietly(self, params: KVTransferParams) -> None:
        try:
            await self._fetcher.release(params, timeout=self._timeout)
        except KVTransferError as exc:
            log.info("unused lease %s... not released (it expires): %s", params.lease_id[:8], exc)
