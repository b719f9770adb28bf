"""A registry inside one process: same behaviour as Redis (TTL included), nothing to run."""

from __future__ import annotations

import time
from collections.abc import Callable

from services.registry.record import WorkerRecord


class InMemoryRegistry:
    """Records with expiry times in a dict; for single-process use and routing tests."""

    def __init__(self, ttl: float = 3.0, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self._clock = clock
        self._records: dict[str, tuple[WorkerRecord, float]] = {}

    async def register(self, record: WorkerRecord) -> None:
        self._records[record.worker_id] = (record, self._clock() + self.ttl)

    async def deregister(self, worker_id: str) -> None:
        self._records.pop(worker_id, None)

    async def list_workers(self, role: str | None = None) -> list[WorkerRecord]:
        now = self._clock()
        for worker_id in [w for w, (_, expires) in self._records.items() if expires <= now]:
            del self._records[worker_id]
        return sorted(
            (r for r, _ in self._records.values() if role is None or r.role == role),
            key=lambda r: r.worker_id,
        )

    async def close(self) -> None:
        self._records.clear()
