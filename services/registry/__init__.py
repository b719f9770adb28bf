"""Worker discovery and load reports: workers register with a heartbeat and a TTL; the router
lists them.

    registry = open_registry("redis://127.0.0.1:6379/0")    # or "memory"
    await registry.register(record)                          # a worker, every second
    workers = await registry.list_workers(role="decode")     # the router
"""

from __future__ import annotations

from services.registry.embedded_redis import EmbeddedRedis, redis_server_binary
from services.registry.errors import RegistryError
from services.registry.heartbeat import Heartbeat
from services.registry.memory_registry import InMemoryRegistry
from services.registry.protocol import Registry
from services.registry.record import KEY_PREFIX, ROLES, WorkerLoad, WorkerRecord
from services.registry.redis_registry import RedisRegistry

DEFAULT_TTL = 3.0
HEARTBEAT_INTERVAL = 1.0


def open_registry(url: str, ttl: float = DEFAULT_TTL) -> Registry:
    """``memory`` gives an in-process registry; ``redis://HOST:PORT/DB`` a Redis one."""
    if url == "memory":
        return InMemoryRegistry(ttl)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisRegistry(url, ttl)
    raise RegistryError(f"unknown registry {url!r}: use redis://HOST:PORT/DB or 'memory'")


__all__ = [
    "DEFAULT_TTL",
    "HEARTBEAT_INTERVAL",
    "KEY_PREFIX",
    "ROLES",
    "EmbeddedRedis",
    "Heartbeat",
    "InMemoryRegistry",
    "RedisRegistry",
    "Registry",
    "RegistryError",
    "WorkerLoad",
    "WorkerRecord",
    "open_registry",
    "redis_server_binary",
]
