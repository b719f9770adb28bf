"""The heartbeat: a worker rewrites its record every second, so its key never reaches its TTL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from services.registry.errors import RegistryError
from services.registry.protocol import Registry
from services.registry.record import WorkerRecord

log = logging.getLogger("pdserve.registry")


class Heartbeat:
    """Writes ``make_record()`` now and then every ``interval`` seconds until stopped."""

    def __init__(
        self, registry: Registry, make_record: Callable[[], WorkerRecord], interval: float = 1.0
    ):
        if not 0 < interval < registry.ttl:
            raise ValueError(
                f"heartbeat interval {interval} s must be positive and below the TTL "
                f"{registry.ttl} s, or records expire between beats"
            )
        self._registry = registry
        self._make_record = make_record
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._worker_id: str | None = None

    async def start(self) -> None:
        """Register at once (raising RegistryError if that fails), then keep beating."""
        record = self._make_record()
        await self._registry.register(record)
        self._worker_id = record.worker_id
        self._task = asyncio.create_task(self._beat(), name="registry-heartbeat")

    async def stop(self) -> None:
        """Stop beating and remove the record, so the worker leaves the registry at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._worker_id is not None:
            try:
                await self._registry.deregister(self._worker_id)
            except RegistryError as exc:
                log.warning("could not deregister %s (it expires by TTL): %s", self._worker_id, exc)
            self._worker_id = None

    async def _beat(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._registry.register(self._make_record())
            except RegistryError as exc:
                if not failing:
                    log.warning("heartbeat failed, retrying every %s s: %s", self._interval, exc)
                failing = True
            else:
                if failing:
                    log.info("heartbeat restored")
                failing = False
