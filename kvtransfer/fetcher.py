"""The fetcher: pulls leased KV blocks from a holder into a decode worker's own pool.

Everything that can be checked locally (backend, fingerprint, block ids, window) is checked
before any byte moves, so a refused fetch writes nothing. Once bytes flow, a failure or a
timeout aborts the connection before the error is raised, so nothing writes into the
destination blocks afterwards; their contents are then undefined and the caller, who owns
them, frees or reuses them. Connections to a holder are kept for reuse while idle.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch

from kvtransfer.checksum import crc32_of
from kvtransfer.errors import (
    FingerprintMismatch,
    InvalidParams,
    KVTransferError,
    TransferError,
    TransferTimeout,
)
from kvtransfer.metrics import FetcherMetrics, TransferCounters
from kvtransfer.params import (
    Fingerprint,
    KVTransferParams,
    check_fingerprint,
    fingerprint_difference,
)
from kvtransfer.protocol import ReadRequest, ReleaseRequest, check_reply
from kvtransfer.region import KVRegion, Window, plan_runs
from kvtransfer.transport import Connection, check_backend, connect, hold, let_go


@dataclass(frozen=True)
class FetchResult:
    """What one fetch moved: payload bytes, wall seconds, and how many transfers (runs)."""

    nbytes: int
    seconds: float
    runs: int


def _as_params(params: KVTransferParams | dict[str, Any]) -> KVTransferParams:
    if isinstance(params, KVTransferParams):
        return params
    return KVTransferParams.from_dict(params)


@dataclass
class _Idle:
    connection: Connection
    since: float


class KVFetcher:
    """Pulls blocks named by kv_transfer_params into this worker's pool tensor."""

    def __init__(
        self,
        pool: torch.Tensor,
        block_bytes: int,
        fingerprint: Fingerprint,
        token: str,
        *,
        backend: str = "tcp",
        checksum: bool = False,
        connect_timeout: float = 5.0,
        max_idle_connections: int = 8,
        idle_seconds: float = 30.0,
    ):
        if not isinstance(token, str) or not token:
            raise InvalidParams("the fetcher needs a non-empty shared token")
        self._region = KVRegion(pool, block_bytes)
        self._fingerprint = dict(check_fingerprint(fingerprint))
        self._token = token
        self._backend = check_backend(backend)
        self._checksum = checksum
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle_connections
        # Below the holder's idle timeout, so a reused connection is never one it dropped.
        self._idle_seconds = idle_seconds
        self._idle: dict[tuple[str, int], list[_Idle]] = {}
        self._counters = TransferCounters()
        self._holding = False  # whether this fetcher called hold() on its backend

    async def close(self) -> None:
        """Close every idle connection and let go of the backend."""
        for idle in self._idle.values():
            for entry in idle:
                entry.connection.abort()
        self._idle.clear()
        if self._holding:
            self._holding = False
            let_go(self._backend)

    async def __aenter__(self) -> KVFetcher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def backend(self) -> str:
        return self._backend

    @property
    def metrics(self) -> FetcherMetrics:
        """A snapshot of the fetcher's counters."""
        return FetcherMetrics(
            bytes_received=self._counters.nbytes,
            transfers=self._counters.transfers,
            failures=self._counters.failures,
            transfer_seconds=self._counters.seconds,
        )

    async def fetch(
        self,
        params: KVTransferParams | dict[str, Any],
        dst_block_ids: list[int],
        *,
        src_offset: int = 0,
        dst_offset: int = 0,
        length: int | None = None,
        timeout: float = 10.0,
        release: bool = True,
        expect_fingerprint: Fingerprint | None = None,
    ) -> FetchResult:
        """Copy the leased blocks into ``dst_block_ids`` (same order), then release the lease.

        ``src_offset``/``dst_offset``/``length`` pick the same byte window of every block
        (default: the whole block). ``expect_fingerprint`` is the holder layout to accept when
        it differs from ours (a tensor-parallel slice); by default both must be equal.
        With ``release`` (the default) the holder releases the lease as soon as it has sent the
        data, saving a round trip; if the fetch then fails, the caller recomputes anyway.
        ``release=False`` keeps the lease for other ranks (release it later with ``release``).
        """
        params = _as_params(params)
        started = time.perf_counter()
        request, dst_spans = self._plan(
            params, dst_block_ids, src_offset, dst_offset, length, expect_fingerprint, release
        )
        nbytes = sum(span.numel() for span in dst_spans)
        try:
            async with asyncio.timeout(timeout):
                connection = await self._checkout(params.host, params.port)
                try:
                    await self._read(connection, request, dst_spans, nbytes)
                except BaseException:
                    connection.abort()
                    raise
        except TimeoutError as exc:
            self._counters.failures += 1
            raise TransferTimeout(
                f"fetching lease {params.lease_id[:8]}... from {params.host}:{params.port} "
                f"did not finish within {timeout} s"
            ) from exc
        except KVTransferError:
            self._counters.failures += 1
            raise
        seconds = time.perf_counter() - started
        self._counters.record(nbytes, seconds)
        self._checkin(params.host, params.port, connection)
        return FetchResult(nbytes=nbytes, seconds=seconds, runs=len(dst_spans))

    async def release(
        self, params: KVTransferParams | dict[str, Any], *, timeout: float = 5.0
    ) -> None:
        """Release a lease without reading it; LeaseNotFound if it is already gone."""
        params = _as_params(params)
        try:
            async with asyncio.timeout(timeout):
                connection = await self._checkout(params.host, params.port)
                try:
                    await connection.send_message(
                        ReleaseRequest(self._token, params.lease_id).to_message()
                    )
                    check_reply(await connection.recv_message())
                except BaseException:
                    connection.abort()
                    raise
                self._checkin(params.host, params.port, connection)
        except TimeoutError as exc:
            raise TransferTimeout(
                f"releasing lease {params.lease_id[:8]}... did not finish within {timeout} s"
            ) from exc

    def _plan(
        self,
        params: KVTransferParams,
        dst_block_ids: list[int],
        src_offset: int,
        dst_offset: int,
        length: int | None,
        expect_fingerprint: Fingerprint | None,
        release: bool,
    ) -> tuple[ReadRequest, list[torch.Tensor]]:
        """Check everything checkable locally and turn the fetch into a request and views."""
        if params.backend != self._backend:
            raise InvalidParams(
                f"params are for backend {params.backend!r} but this fetcher uses {self._backend!r}"
            )
        expected = (
            self._fingerprint
            if expect_fingerprint is None
            else dict(check_fingerprint(expect_fingerprint, "expect_fingerprint"))
        )
        if params.fingerprint != expected:
            raise FingerprintMismatch(
                "KV layouts differ: " + fingerprint_difference(expected, params.fingerprint)
            )
        dst_ids = self._region.check_ids(dst_block_ids, "dst_block_ids")
        if len(dst_ids) != len(params.block_ids):
            raise InvalidParams(
                f"{len(dst_ids)} destination blocks given for {len(params.block_ids)} leased blocks"
            )
        if length is None:
            if params.block_bytes != self._region.block_bytes:
                raise FingerprintMismatch(
                    f"block size differs: holder {params.block_bytes} bytes, ours "
                    f"{self._region.block_bytes}; pass a byte window to copy part of each block"
                )
            length = params.block_bytes
        window = Window(src_offset, dst_offset, length)
        window.check(params.block_bytes, self._region.block_bytes)
        runs = plan_runs(
            params.block_ids,
            dst_ids,
            coalesce=window.is_whole(params.block_bytes, self._region.block_bytes),
        )
        dst_spans = [
            self._region.span(run.dst_block, run.count, window.dst_offset, window.length)
            for run in runs
        ]
        request = ReadRequest(
            token=self._token,
            lease_id=params.lease_id,
            fingerprint=params.fingerprint,
            block_bytes=params.block_bytes,
            runs=[(run.src_block, run.count) for run in runs],
            src_offset=window.src_offset,
            length=window.length,
            checksum=self._checksum,
            release=release,
        )
        return request, dst_spans

    async def _read(
        self,
        connection: Connection,
        request: ReadRequest,
        dst_spans: list[torch.Tensor],
        nbytes: int,
    ) -> None:
        await connection.send_message(request.to_message())
        reply = check_reply(await connection.recv_message())
        if reply.get("nbytes") != nbytes:
            raise TransferError(
                f"holder announced {reply.get('nbytes')!r} bytes, the request needs {nbytes}"
            )
        await connection.recv_spans(dst_spans)
        if request.checksum:
            got = await asyncio.to_thread(crc32_of, dst_spans)
            if got != reply.get("crc32"):
                raise TransferError(
                    f"checksum mismatch: holder sent crc32 {reply.get('crc32')!r}, received {got}"
                )

    async def _checkout(self, host: str, port: int) -> Connection:
        idle = self._idle.get((host, port), [])
        now = time.monotonic()
        while idle:
            entry = idle.pop()
            if now - entry.since < self._idle_seconds and entry.connection.is_alive():
                return entry.connection
            entry.connection.abort()
        if not self._holding:
            hold(self._backend)
            self._holding = True
        return await connect(self._backend, host, port, self._connect_timeout)

    def _checkin(self, host: str, port: int, connection: Connection) -> None:
        idle = self._idle.setdefault((host, port), [])
        if len(idle) < self._max_idle and connection.is_alive():
            idle.append(_Idle(connection, time.monotonic()))
        else:
            connection.abort()
