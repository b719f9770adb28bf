"""Leases hand their blocks back exactly once, and never while a transfer still reads them."""

from __future__ import annotations

import threading
import time

import pytest

from kvtransfer import InvalidParams, LeaseNotFound
from kvtransfer.leases import LeaseTable


def test_release_hands_blocks_back_once() -> None:
    returned: list[list[int]] = []
    table = LeaseTable(returned.append)
    lease = table.grant([1, 2], num_tokens=20, ttl=30)
    assert table.release(lease.lease_id)
    assert not table.release(lease.lease_id)
    assert not table.expire_if_due(lease.lease_id)
    assert returned == [[1, 2]]
    assert (table.granted, table.released, table.expired, len(table)) == (1, 1, 0, 0)


def test_expired_lease_is_refused_and_counted() -> None:
    returned: list[list[int]] = []
    table = LeaseTable(returned.append)
    lease = table.grant([7], num_tokens=5, ttl=0.01)
    time.sleep(0.02)  # the lease must be past its expiry time; nothing races with it
    with pytest.raises(LeaseNotFound):
        table.acquire(lease.lease_id, [7])
    assert returned == [[7]]
    assert (table.expired, table.released) == (1, 0)


def test_lease_closed_during_a_read_stays_pinned_until_the_read_ends() -> None:
    returned: list[list[int]] = []
    table = LeaseTable(returned.append)
    lease = table.grant([3, 4], num_tokens=20, ttl=30)
    reading = table.acquire(lease.lease_id, [3, 4])
    assert table.release(lease.lease_id)
    assert returned == [] and len(table) == 1
    with pytest.raises(LeaseNotFound):
        table.acquire(lease.lease_id, [3])
    table.finish_read(reading)
    assert returned == [[3, 4]] and len(table) == 0


def test_reading_blocks_outside_the_lease_is_refused() -> None:
    table = LeaseTable(None)
    lease = table.grant([3, 4], num_tokens=20, ttl=30)
    with pytest.raises(InvalidParams, match=r"blocks \[5\] are not under lease"):
        table.acquire(lease.lease_id, [4, 5])


def test_lease_ids_are_unguessable_and_distinct() -> None:
    table = LeaseTable(None)
    ids = {table.grant([0], 1, 30).lease_id for _ in range(200)}
    assert len(ids) == 200 and all(len(i) >= 32 for i in ids)


def test_concurrent_release_and_expiry_hand_back_once() -> None:
    returned: list[list[int]] = []
    table = LeaseTable(returned.append)
    leases = [table.grant([i], 1, ttl=0.001) for i in range(300)]
    time.sleep(0.01)
    threads = [
        threading.Thread(target=lambda: [table.release(x.lease_id) for x in leases]),
        threading.Thread(target=lambda: [table.expire_if_due(x.lease_id) for x in leases]),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(b for blocks in returned for b in blocks) == list(range(300))
    assert table.released + table.expired == 300


def test_failing_callback_does_not_break_the_table() -> None:
    def explode(block_ids: list[int]) -> None:
        raise RuntimeError("engine bug")

    table = LeaseTable(explode)
    lease = table.grant([1], 1, ttl=30)
    assert table.release(lease.lease_id)
    assert len(table) == 0


@pytest.mark.parametrize(("ttl", "tokens"), [(0, 1), (-1, 1), (30, 0)])
def test_bad_grant_arguments(ttl: float, tokens: int) -> None:
    with pytest.raises(InvalidParams):
        LeaseTable(None).grant([1], tokens, ttl)
