"""The interface every registry offers, so the router and workers need not know which one runs."""

from __future__ import annotations

from typing import Protocol

from services.registry.record import WorkerRecord


class Registry(Protocol):
    """Where workers announce themselves (with a TTL) and the router finds them."""

    ttl: float

    async def register(self, record: WorkerRecord) -> None:
        """Write or refresh ``record``; it vanishes ``ttl`` seconds after the last write."""

    async def deregister(self, worker_id: str) -> None:
        """Remove a worker's record now (clean shutdown)."""

    async def list_workers(self, role: str | None = None) -> list[WorkerRecord]:
        """Every live record, optionally only one role, sorted by worker id."""

    async def close(self) -> None:
        """Release connections; the registry is unusable afterwards."""
