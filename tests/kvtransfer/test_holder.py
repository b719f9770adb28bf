"""The holder's own contract: grants, exactly-once hand-back, counters, hostile peers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading

import pytest
import torch
from holder_harness import BLOCK_BYTES, FINGERPRINT, TOKEN, same_bytes, sentinel_pool, wait_for

from kvtransfer import InvalidParams, KVFetcher, KVHolder

NUM_BLOCKS = 8


def random_pool() -> torch.Tensor:
    return torch.randn((NUM_BLOCKS, BLOCK_BYTES // 2), dtype=torch.bfloat16)


def test_grant_needs_a_started_holder() -> None:
    holder = KVHolder(random_pool(), BLOCK_BYTES, FINGERPRINT, TOKEN)
    with pytest.raises(RuntimeError, match="not started"):
        holder.grant([0], 16)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backend": "rdma"}, "unknown backend"),
        ({"lease_ttl": 0}, "positive seconds"),
        ({"token": ""}, "non-empty shared token"),
        ({"block_bytes": 1000}, "whole number"),
    ],
)
def test_bad_construction_is_refused(kwargs: dict, message: str) -> None:
    args = {"block_bytes": BLOCK_BYTES, "token": TOKEN} | kwargs
    with pytest.raises(InvalidParams, match=message):
        KVHolder(
            random_pool(),
            args.pop("block_bytes"),
            FINGERPRINT,
            args.pop("token"),
            **args,
        )


@pytest.mark.parametrize("backend", ["tcp", "ucx"])
async def test_counters_and_exactly_once_hand_back(backend: str) -> None:
    returned: list[list[int]] = []
    src = random_pool()
    dst = sentinel_pool(NUM_BLOCKS)
    async with KVHolder(
        src, BLOCK_BYTES, FINGERPRINT, TOKEN, backend=backend, port=0, on_release=returned.append
    ) as holder:
        assert holder.port > 0
        with pytest.raises(InvalidParams, match="outside the pool"):
            holder.grant([NUM_BLOCKS], 16)
        fetched = holder.grant([0, 1], 20)
        assert fetched.port == holder.port and fetched.host == "127.0.0.1"
        released_by_engine = holder.grant([2], 10)
        kept = holder.grant([3, 4], 30)
        assert holder.active_leases == 3
        async with KVFetcher(dst, BLOCK_BYTES, FINGERPRINT, TOKEN, backend=backend) as fetcher:
            await fetcher.fetch(fetched, [6, 7])
        assert holder.release(released_by_engine.lease_id)
        assert not holder.release(released_by_engine.lease_id)
        await wait_for(lambda: holder.active_leases == 1, "two leases to close")
        metrics = holder.metrics
        assert metrics.bytes_sent == 2 * BLOCK_BYTES and metrics.transfers == 1
        assert (metrics.leases_granted, metrics.leases_released) == (3, 2)
    # Stopping hands back what is still leased, and nothing twice.
    assert sorted(returned) == [[0, 1], [2], [3, 4]]
    assert holder.metrics.active_leases == 0 and kept.lease_id
    assert same_bytes(dst[[6, 7]], src[[0, 1]])


async def test_grant_from_the_engine_thread_still_expires() -> None:
    returned: list[list[int]] = []
    async with KVHolder(
        random_pool(), BLOCK_BYTES, FINGERPRINT, TOKEN, on_release=returned.append
    ) as holder:
        granted = []
        engine = threading.Thread(target=lambda: granted.append(holder.grant([5], 8, ttl=0.2)))
        engine.start()
        engine.join()
        assert holder.active_leases == 1
        await wait_for(lambda: returned == [[5]], "the lease granted off-loop to expire")
        assert holder.metrics.leases_expired == 1


async def test_garbage_from_a_peer_does_not_hurt_the_holder() -> None:
    src = random_pool()
    async with KVHolder(src, BLOCK_BYTES, FINGERPRINT, TOKEN) as holder:
        params = holder.grant([1], 16)
        loop = asyncio.get_running_loop()
        for junk in [
            struct.pack(">I", 2**31) + b"x",  # absurd length
            struct.pack(">I", 5) + b"\xff\xfe{[(",  # not JSON
            struct.pack(">I", 2) + b"[]",  # JSON, not an object
            struct.pack(">I", 16) + b'{"op": "read"}  ',  # no token
        ]:
            with socket.create_connection(("127.0.0.1", holder.port)) as peer:
                peer.setblocking(False)
                await loop.sock_sendall(peer, junk)
                # The holder answers at most once, then closes (EOF, or a reset if it left our
                # junk unread).
                with contextlib.suppress(ConnectionResetError):
                    while await loop.sock_recv(peer, 4096):
                        pass
        dst = sentinel_pool(NUM_BLOCKS)
        async with KVFetcher(dst, BLOCK_BYTES, FINGERPRINT, TOKEN) as fetcher:
            await fetcher.fetch(params, [0])
        assert same_bytes(dst[0], src[1])
        assert holder.metrics.failures >= 1
