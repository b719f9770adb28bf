"""Routing follows load: least queued prefill work, most free KV blocks, counting what this
router sent since each worker's last report; failed workers are avoided until they report."""

from __future__ import annotations

import time

from services.registry import InMemoryRegistry, WorkerLoad, WorkerRecord
from services.router.picker import Picker

MODEL = "smollm2"


def record(worker_id: str, role: str, queued: int = 0, free: int = 100, **extra) -> WorkerRecord:
    fields = dict(
        worker_id=worker_id,
        role=role,
        url=f"http://{worker_id}:8100",
        model=MODEL,
        tp_size=1,
        kv_backend="tcp",
        started_at=time.time(),
        load=WorkerLoad(queued_prefill_tokens=queued, free_blocks=free, total_blocks=100),
        updated_at=time.time(),
    )
    return WorkerRecord(**(fields | extra))


async def listed(*records: WorkerRecord) -> list[WorkerRecord]:
    registry = InMemoryRegistry()
    for r in records:
        await registry.register(r)
    return await registry.list_workers()


async def test_prefill_goes_to_the_least_queued_worker():
    workers = await listed(record("p1", "prefill", queued=900), record("p2", "prefill", queued=50))
    assert Picker(MODEL).pick(workers, "prefill").worker_id == "p2"


async def test_decode_goes_to_the_worker_with_most_free_blocks():
    workers = await listed(record("d1", "decode", free=80), record("d2", "decode", free=20))
    assert Picker(MODEL).pick(workers, "decode").worker_id == "d1"


async def test_requests_sent_since_the_last_report_count_as_load():
    workers = await listed(record("p1", "prefill", queued=0), record("p2", "prefill", queued=300))
    picker = Picker(MODEL)
    chosen = []
    for _ in range(4):
        w = picker.pick(workers, "prefill")
        picker.sent(w, 200)
        chosen.append(w.worker_id)
    # p1: 0 -> 200 -> 400, then p2 (300 < 400) -> 500, then p1 (400 < 500): the burst
    # spreads by queued tokens instead of piling onto the worker that reported least.
    assert chosen == ["p1", "p1", "p2", "p1"]


async def test_decode_burst_spreads_by_blocks_the_requests_will_take():
    workers = await listed(record("d1", "decode", free=40), record("d2", "decode", free=30))
    picker = Picker(MODEL, block_size=16)
    first = picker.pick(workers, "decode")
    picker.sent(first, 16 * 20 - 1)  # a 319-token prompt takes 20 blocks
    assert first.worker_id == "d1"
    assert picker.pick(workers, "decode").worker_id == "d2"


async def test_a_new_report_replaces_what_the_router_counted():
    picker = Picker(MODEL)
    p1, p2 = record("p1", "prefill", queued=0), record("p2", "prefill", queued=100)
    picker.sent(picker.pick(await listed(p1, p2), "prefill"), 1000)
    assert picker.pick(await listed(p1, p2), "prefill").worker_id == "p2"
    # p1's next heartbeat shows the work done: its own report is the truth again.
    p1_later = record("p1", "prefill", queued=0, updated_at=p1.updated_at + 1)
    assert picker.pick(await listed(p1_later, p2), "prefill").worker_id == "p1"


async def test_filters_role_model_and_exclusions():
    workers = await listed(
        record("a", "prefill", queued=0, model="other-model"),
        record("b", "decode", free=100),
        record("c", "prefill", queued=500),
        record("d", "both", queued=0),
    )
    picker = Picker(MODEL)
    assert picker.pick(workers, "prefill").worker_id == "c"
    assert picker.pick(workers, "prefill", exclude={"c"}) is None
    assert picker.pick(workers, "both").worker_id == "d"
    assert picker.pick(workers, "decode").worker_id == "b"


async def test_a_failed_worker_is_avoided_until_it_reports_again():
    d1, d2 = record("d1", "decode", free=90), record("d2", "decode", free=10)
    picker = Picker(MODEL)
    picker.failed(d1)
    assert picker.pick(await listed(d1, d2), "decode").worker_id == "d2"
    d1_alive = record("d1", "decode", free=90, updated_at=d1.updated_at + 1)
    assert picker.pick(await listed(d1_alive, d2), "decode").worker_id == "d1"


async def test_expired_workers_are_not_picked():
    now = [0.0]
    registry = InMemoryRegistry(ttl=3.0, clock=lambda: now[0])
    await registry.register(record("p1", "prefill", queued=0))
    await registry.register(record("p2", "prefill", queued=999))
    now[0] = 2.0
    await registry.register(record("p2", "prefill", queued=999))  # p2 beats, p1 does not
    now[0] = 3.5
    assert Picker(MODEL).pick(await registry.list_workers(), "prefill").worker_id == "p2"


async def test_decode_prefers_workers_that_can_pull_from_the_prefill_workers_backend():
    # d1 has more room but speaks UCX; a TCP prefill worker's KV is pulled by d2 instead.
    workers = await listed(
        record("d1", "decode", free=90, kv_backend="ucx"),
        record("d2", "decode", free=10, kv_backend="tcp"),
    )
    picker = Picker(MODEL)
    assert picker.pick(workers, "decode", kv_backend="tcp").worker_id == "d2"
    assert picker.pick(workers, "decode", kv_backend="ucx").worker_id == "d1"
    assert picker.pick(workers, "decode").worker_id == "d1"  # nothing to pull: room decides


async def test_with_no_decode_worker_on_that_backend_another_one_still_serves():
    # It cannot pull the KV, so it recomputes the prompt: slower, but the request is served.
    workers = await listed(record("d1", "decode", kv_backend="ucx"))
    assert Picker(MODEL).pick(workers, "decode", kv_backend="tcp").worker_id == "d1"
