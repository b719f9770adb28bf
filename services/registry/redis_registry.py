"""The registry in Redis: one JSON record per worker under ``pdserve:worker:<id>``, with a TTL.

A worker that stops beating disappears when its key expires, with no cleanup by anyone.
Every call has a timeout, so a stuck Redis slows a heartbeat down but never hangs a worker.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.registry.errors import RegistryError
from services.registry.record import KEY_PREFIX, WorkerRecord

log = logging.getLogger("pdserve.registry")


class RedisRegistry:
    """Workers' records in Redis, with key expiry as the liveness rule."""

    def __init__(self, url: str, ttl: float = 3.0, timeout: float = 2.0):
        self.url = url
        self.ttl = ttl
        try:
            self._redis = aioredis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout
            )
        except ValueError as exc:
            raise RegistryError(f"bad registry URL {url!r}: {exc}") from exc

    async def ping(self) -> None:
        """Raise RegistryError unless Redis answers."""
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            raise RegistryError(f"cannot reach the registry at {self.url}: {exc}") from exc

    async def register(self, record: WorkerRecord) -> None:
        try:
            await self._redis.set(record.key, record.to_json(), px=int(self.ttl * 1000))
        except (RedisError, OSError) as exc:
            raise RegistryError(f"cannot write to the registry at {self.url}: {exc}") from exc

    async def deregister(self, worker_id: str) -> None:
        try:
            await self._redis.delete(KEY_PREFIX + worker_id)
        except (RedisError, OSError) as exc:
            raise RegistryError(f"cannot write to the registry at {self.url}: {exc}") from exc

    async def list_workers(self, role: str | None = None) -> list[WorkerRecord]:
        try:
            keys = [key async for key in self._redis.scan_iter(match=KEY_PREFIX + "*", count=256)]
            values = await self._redis.mget(keys) if keys else []
        except (RedisError, OSError) as exc:
            raise RegistryError(f"cannot read the registry at {self.url}: {exc}") from exc
        records = []
        for key, value in zip(keys, values, strict=True):
            if value is None:
                continue  # expired between SCAN and MGET
            try:
                record = WorkerRecord.from_json(value)
            except RegistryError as exc:
                log.warning("ignoring registry key %s: %s", key, exc)
                continue
            if role is None or record.role == role:
                records.append(record)
        return sorted(records, key=lambda r: r.worker_id)

    async def close(self) -> None:
        await self._redis.aclose()
