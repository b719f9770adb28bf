"""Pulling KV blocks from a holder in another process, over each backend (tcp and ucx)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import struct
import zlib
from pathlib import Path

import pytest
import torch
from holder_harness import (
    BLOCK_BYTES,
    FINGERPRINT,
    HEAD_BYTES,
    NUM_BLOCKS,
    TOKEN,
    HolderProcess,
    holder_pool,
    same_bytes,
    sentinel_pool,
    wait_for,
)

from kvtransfer import (
    AuthError,
    FingerprintMismatch,
    InvalidParams,
    KVFetcher,
    LeaseNotFound,
    TransferError,
    TransferTimeout,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

EXPECTED = holder_pool()


def untouched_except(pool: torch.Tensor, written: list[int]) -> bool:
    """True when every block outside ``written`` still holds the sentinel."""
    others = [b for b in range(pool.shape[0]) if b not in written]
    return same_bytes(pool[others], sentinel_pool(pool.shape[0], pool.shape[1] * 2)[others])


async def test_blocks_arrive_bit_exact_into_other_block_ids(holder: HolderProcess) -> None:
    pool = sentinel_pool()
    src, dst = [3, 4, 5, 9, 20], [40, 41, 42, 0, 7]
    async with KVFetcher(pool, BLOCK_BYTES, FINGERPRINT, TOKEN, backend=holder.backend) as fetcher:
        params = await holder.grant(src, num_tokens=70)
        result = await fetcher.fetch(params, dst)
        assert fetcher.metrics.bytes_received == 5 * BLOCK_BYTES
    # 3,4,5 -> 40,41,42 is one coalesced run; 9 -> 0 and 20 -> 7 are one each.
    assert (result.nbytes, result.runs) == (5 * BLOCK_BYTES, 3)
    for s, d in zip(src, dst, strict=True):
        assert same_bytes(pool[d], EXPECTED[s])
    assert untouched_except(pool, dst)
    # The fetch released the lease: the holder handed the blocks back to its engine.
    await wait_for(lambda: src in holder.released, "the lease's blocks to be handed back")


async def test_sixteen_concurrent_fetches_all_arrive_intact(holder: HolderProcess) -> None:
    pool = sentinel_pool()
    leases = [[3 * i, 3 * i + 1, 3 * i + 2] for i in range(16)]
    # Reverse and interleave destinations so no destination run mirrors its source run.
    targets = [[NUM_BLOCKS - 1 - i, NUM_BLOCKS - 17 - i, i] for i in range(16)]
    async with KVFetcher(pool, BLOCK_BYTES, FINGERPRINT, TOKEN, backend=holder.backend) as fetcher:
        params = [await holder.grant(blocks, num_tokens=48) for blocks in leases]
        results = await asyncio.gather(
            *(fetcher.fetch(p, t) for p, t in zip(params, targets, strict=True))
        )
    assert all(r.nbytes == 3 * BLOCK_BYTES for r in results)
    for blocks, target in zip(leases, targets, strict=True):
        for s, d in zip(blocks, target, strict=True):
            assert same_bytes(pool[d], EXPECTED[s]), f"block {s} -> {d} corrupted"
    await wait_for(
        lambda: all(blocks in holder.released for blocks in leases), "all 16 leases handed back"
    )


async def test_checksum_mode_verifies_the_bytes(holder: HolderProcess) -> None:
    pool = sentinel_pool()
    async with KVFetcher(
        pool, BLOCK_BYTES, FINGERPRINT, TOKEN, backend=holder.backend, checksum=True
    ) as fetcher:
        params = await holder.grant([50, 51, 60], num_tokens=40)
        await fetcher.fetch(params, [1, 2, 3])
    assert same_bytes(pool[[1, 2, 3]], EXPECTED[[50, 51, 60]])


async def test_mismatched_fingerprint_is_refused_and_nothing_written(
    holder: HolderProcess,
) -> None:
    other = {**FINGERPRINT, "num_layers": 31}
    pool = sentinel_pool()
    params = await holder.grant([10, 11], num_tokens=20)
    async with KVFetcher(pool, BLOCK_BYTES, other, TOKEN, backend=holder.backend) as fetcher:
        with pytest.raises(
            FingerprintMismatch, match="num_layers: fetcher expects 31, holder has 30"
        ):
            await fetcher.fetch(params, [0, 1])
        # Params forged to look like our layout: the holder checks against its own and refuses.
        with pytest.raises(FingerprintMismatch, match="holder refused.*fetcher expects 31"):
            await fetcher.fetch({**params, "fingerprint": other}, [0, 1])
    assert untouched_except(pool, [])
    # The refused lease was not consumed: a matching fetcher still gets it.
    async with KVFetcher(pool, BLOCK_BYTES, FINGERPRINT, TOKEN, backend=holder.backend) as fetcher:
        await fetcher.fetch(params, [0, 1])
    assert same_bytes(pool[[0, 1]], EXPECTED[[10, 11]])


async def test_expired_lease_is_refused_and_its_blocks_freed(holder: HolderProcess) -> None:
    params = await holder.grant([30, 31], num_tokens=20, ttl=0.3)
    await wait_for(lambda: [30, 31] in holder.released, "the expired lease's blocks back")
    assert (await holder.metrics())["leases_expired"] >= 1
    pool = sentinel_pool()
    async with KVFetcher(pool, BLOCK_BYTES, FINGERPRINT, TOKEN, backend=holder.backend) as fetcher:
        with pytest.raises(LeaseNotFound):
            await fetcher.fetch(params, [0, 1])
    assert untouched_except(pool, [])


async def test_never_issued_lease_is_refused(holder: HolderProcess) -> None:
    params = await holder.grant([12], num_tokens=5)
    forged = {**params, "lease_id": secrets.token_urlsafe(24)}
    pool = sentinel_pool()
    async with KVFetcher(pool, BLOCK_BYTES, FINGERPRINT, TOKEN, backend=holder.backend) as fetcher:
        with pytest.raises(LeaseNotFound):
            await fetcher.fetch(forged, [0])
        with pytest.raises(LeaseNotFound):
            await fetcher.release(forged)
        await fetcher.release(params)
    assert untouched_except(pool, [])
    await wait_for(lambda: [12] in holder.released, "the released lease's block back")


async def test_wrong_token_is_refused_and_lease_survives(holder: HolderProcess) -> None:
    pool = sentinel_pool()
    params = await holder.grant([13, 14], num_tokens=20)
    async with KVFetcher(pool, BLOCK_BYTES, FINGERPRINT, "guess", backend=holder.backend) as f:
        with pytest.raises(AuthError):
            await f.fetch(params, [0, 1])
        with pytest.raises(AuthError):
            await f.release(params)
    assert untouched_except(pool, [])
    async with KVFetcher(pool, BLOCK_BYTES, FINGERPRINT, TOKEN, backend=holder.backend) as f:
        await f.fetch(params, [0, 1])
    assert same_bytes(pool[[0, 1]], EXPECTED[[13, 14]])


async def test_bad_block_ids_are_refused_and_nothing_written(holder: HolderProcess) -> None:
    pool = sentinel_pool()
    params = await holder.grant([15, 16], num_tokens=20)
    before = await holder.metrics()
    async with KVFetcher(pool, BLOCK_BYTES, FINGERPRINT, TOKEN, backend=holder.backend) as f:
        for dst, message in [
            ([-1, 0], "non-negative"),
            ([0, NUM_BLOCKS], "outside the pool"),
            ([0, 0], "more than once"),
            ([0], "1 destination blocks given for 2"),
            ([0, True], "non-negative integers"),
        ]:
            with pytest.raises(InvalidParams, match=message):
                await f.fetch(params, dst)
        # Refused locally: no request reached the holder.
        assert (await holder.metrics())["failures"] == before["failures"]
        # Source ids the holder never leased, or outside its pool, are refused by the holder.
        with pytest.raises(InvalidParams, match="outside the pool"):
            await f.fetch({**params, "block_ids": [15, 10**6]}, [0, 1])
        with pytest.raises(InvalidParams, match=r"blocks \[17\] are not under lease"):
            await f.fetch({**params, "block_ids": [15, 17]}, [0, 1])
        assert untouched_except(pool, [])
        await f.fetch(params, [0, 1])
    assert same_bytes(pool[[0, 1]], EXPECTED[[15, 16]])


async def test_malformed_params_are_refused(holder: HolderProcess) -> None:
    pool = sentinel_pool()
    params = await holder.grant([17], num_tokens=5)
    async with KVFetcher(pool, BLOCK_BYTES, FINGERPRINT, TOKEN, backend=holder.backend) as f:
        for bad in [
            {**params, "port": "7000"},
            {**params, "block_ids": "17"},
            {k: v for k, v in params.items() if k != "lease_id"},
            {**params, "extra": 1},
            {**params, "backend": "carrier-pigeon"},
            ["not", "a", "dict"],
        ]:
            with pytest.raises(InvalidParams):
                await f.fetch(bad, [0])
        other_backend = "tcp" if holder.backend == "ucx" else "ucx"
        with pytest.raises(InvalidParams, match="this fetcher uses"):
            await f.fetch({**params, "backend": other_backend}, [0])
        await f.release(params)
    assert untouched_except(pool, [])


async def test_partial_block_window_moves_one_head(holder: HolderProcess) -> None:
    # A decode rank that owns KV head 1 only: its blocks are one head wide.
    rank_fingerprint = {**FINGERPRINT, "tp_rank": 1, "tp_size": 3, "kv_head_start": 1}
    rank_fingerprint["kv_head_count"] = 1
    pool = sentinel_pool(16, HEAD_BYTES)
    params = await holder.grant([21, 22, 23], num_tokens=40)
    async with KVFetcher(pool, HEAD_BYTES, rank_fingerprint, TOKEN, backend=holder.backend) as f:
        with pytest.raises(FingerprintMismatch, match="kv_head_count"):
            await f.fetch(params, [2, 3, 4], src_offset=HEAD_BYTES, length=HEAD_BYTES)
        with pytest.raises(FingerprintMismatch, match="pass a byte window"):
            await f.fetch(params, [2, 3, 4], expect_fingerprint=FINGERPRINT)
        with pytest.raises(InvalidParams, match="overruns the source block"):
            await f.fetch(
                params, [2, 3, 4], src_offset=BLOCK_BYTES, length=1, expect_fingerprint=FINGERPRINT
            )
        result = await f.fetch(
            params,
            [2, 3, 4],
            src_offset=HEAD_BYTES,
            length=HEAD_BYTES,
            expect_fingerprint=FINGERPRINT,
        )
    assert (result.nbytes, result.runs) == (3 * HEAD_BYTES, 3)
    head_1 = slice(HEAD_BYTES, 2 * HEAD_BYTES)
    for s, d in zip([21, 22, 23], [2, 3, 4], strict=True):
        assert torch.equal(pool[d].view(torch.uint8), EXPECTED[s].view(torch.uint8)[head_1])
    assert untouched_except(pool, [2, 3, 4])


async def test_window_into_same_layout_writes_only_the_window(holder: HolderProcess) -> None:
    pool = sentinel_pool()
    params = await holder.grant([24, 25], num_tokens=20)
    async with KVFetcher(pool, BLOCK_BYTES, FINGERPRINT, TOKEN, backend=holder.backend) as f:
        await f.fetch(params, [5, 6], src_offset=0, dst_offset=2 * HEAD_BYTES, length=HEAD_BYTES)
    fresh = sentinel_pool()
    for s, d in zip([24, 25], [5, 6], strict=True):
        got, src, old = (t.view(torch.uint8) for t in (pool[d], EXPECTED[s], fresh[d]))
        assert torch.equal(got[2 * HEAD_BYTES :], src[:HEAD_BYTES])
        assert torch.equal(got[: 2 * HEAD_BYTES], old[: 2 * HEAD_BYTES])
    assert untouched_except(pool, [5, 6])


async def test_unreachable_holder_is_a_transfer_error(holder: HolderProcess) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    params = await holder.grant([26], num_tokens=5)
    pool = sentinel_pool()
    async with KVFetcher(
        pool, BLOCK_BYTES, FINGERPRINT, TOKEN, backend=holder.backend, connect_timeout=2.0
    ) as f:
        with pytest.raises(TransferError, match="holder 127.0.0.1"):
            await f.fetch({**params, "port": free_port}, [0], timeout=5.0)
        await f.release(params)
    assert untouched_except(pool, [])


@pytest.mark.parametrize("backend", ["tcp", "ucx"])
async def test_holder_killed_mid_transfer_fails_cleanly(backend: str) -> None:
    num_blocks = 640  # 236 MB: long enough to freeze the holder while bytes are flowing
    holder = await HolderProcess.spawn(backend, num_blocks=num_blocks, fill="ones")
    try:
        big = await holder.grant(list(range(num_blocks)), num_tokens=16 * num_blocks)
        small = await holder.grant([0], num_tokens=16)
        pool = torch.zeros((num_blocks, BLOCK_BYTES // 2), dtype=torch.bfloat16)
        async with KVFetcher(pool, BLOCK_BYTES, FINGERPRINT, TOKEN, backend=backend) as f:
            transfer = asyncio.create_task(f.fetch(big, list(range(num_blocks)), timeout=30))
            await wait_for(lambda: bool(pool[0, 0] != 0) or transfer.done(), "first bytes", 30)
            holder.signal(signal.SIGSTOP)
            assert not transfer.done(), "transfer finished before the holder could be frozen"
            # A holder that stops answering costs a fetch its timeout, not a hang.
            small_pool = sentinel_pool(1)
            async with KVFetcher(small_pool, BLOCK_BYTES, FINGERPRINT, TOKEN, backend=backend) as g:
                with pytest.raises(TransferTimeout):
                    await g.fetch(small, [0], timeout=0.5)
            await holder.kill()
            with pytest.raises(TransferError):
                await transfer
            assert f.metrics.failures == 1
    finally:
        await holder.kill()


async def scripted_liar(behaviour: str) -> asyncio.Server:
    """A scripted peer speaking the tcp framing that misbehaves in one chosen way.

    A real holder never sends wrong bytes, so this stands in for a broken or corrupting link.
    """

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        (size,) = struct.unpack(">I", await reader.readexactly(4))
        request = json.loads(await reader.readexactly(size))
        nbytes = sum(count for _, count in request["runs"]) * request["length"]
        payload = EXPECTED[0].view(torch.uint8).numpy().tobytes()[:nbytes]
        crc = zlib.crc32(payload)
        if behaviour == "corrupt":
            payload = bytes([payload[0] ^ 1]) + payload[1:]
        reply = {"ok": True, "nbytes": nbytes // 2 if behaviour == "wrong size" else nbytes}
        reply["crc32"] = crc
        body = json.dumps(reply).encode()
        writer.write(struct.pack(">I", len(body)) + body)
        writer.write(payload[: nbytes // 2] if behaviour == "short" else payload)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        ("short", "peer closed the connection after"),
        ("wrong size", "holder announced"),
        ("corrupt", "checksum mismatch"),
    ],
)
async def test_short_or_corrupt_data_is_detected(behaviour: str, message: str) -> None:
    server = await scripted_liar(behaviour)
    port = server.sockets[0].getsockname()[1]
    params = {
        "backend": "tcp",
        "host": "127.0.0.1",
        "port": port,
        "lease_id": secrets.token_urlsafe(24),
        "block_ids": [0],
        "num_tokens": 16,
        "fingerprint": FINGERPRINT,
        "block_bytes": BLOCK_BYTES,
        "expires_at": 4e9,
    }
    pool = sentinel_pool(4)
    try:
        async with KVFetcher(pool, BLOCK_BYTES, FINGERPRINT, TOKEN, checksum=True) as fetcher:
            with pytest.raises(TransferError, match=message):
                await fetcher.fetch(params, [2], timeout=10)
            assert fetcher.metrics.failures == 1
    finally:
        server.close()
        await server.wait_closed()
    assert untouched_except(pool, [2])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_holder_sleeps_between_fetches(holder: HolderProcess) -> None:
    # Between fetches a holder must sleep: a prefill worker that spins takes a core from the
    # engine and the services beside it.
    pool = sentinel_pool()
    async with KVFetcher(pool, BLOCK_BYTES, FINGERPRINT, TOKEN, backend=holder.backend) as fetcher:
        await fetcher.fetch(await holder.grant([1], num_tokens=16), [2])
        before = _cpu_seconds(holder.proc.pid)
        await asyncio.sleep(2.0)  # the observation window, not a wait for anything
        used = _cpu_seconds(holder.proc.pid) - before
    assert used < 0.5, f"an idle holder used {used:.2f} s of CPU in 2 s"
