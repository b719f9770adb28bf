"""The holder: keeps a prefill worker's KV blocks pinned under leases and serves reads of them.

It serves only reads of blocks under a lease it issued, only to peers presenting the shared
token, and only when the peer's layout fingerprint equals its own. Every refusal is answered
with a typed error code before the holder stops reading from that peer.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
import time
from types import TracebackType
from typing import Any

import torch

from kvtransfer.checksum import crc32_of
from kvtransfer.errors import (
    AuthError,
    FingerprintMismatch,
    InvalidParams,
    KVTransferError,
    LeaseNotFound,
    TransferError,
)
from kvtransfer.leases import LeaseTable, OnRelease
from kvtransfer.metrics import HolderMetrics, TransferCounters
from kvtransfer.params import (
    Fingerprint,
    KVTransferParams,
    check_fingerprint,
    fingerprint_difference,
)
from kvtransfer.protocol import (
    ReadRequest,
    ReleaseRequest,
    error_reply,
    ok_reply,
    parse_request,
    token_of,
)
from kvtransfer.region import KVRegion
from kvtransfer.transport import Connection, Listener, check_backend, listen

log = logging.getLogger(__name__)

_WILDCARD_HOSTS = ("", "0.0.0.0", "::")


class KVHolder:
    """Serves leased KV blocks of one pool tensor to fetchers over one backend.

    ``on_release(block_ids)`` is called exactly once per lease, when it is released (by a
    fetcher, by ``release`` or by ``stop``) or expires; it runs on the event loop thread or
    on the thread that called ``release``, so it must be safe to call from either.

    ``host``/``port`` are where to listen (the ``ucx`` backend listens on every interface and
    uses only the port); ``advertise_host`` is the address put in the params for peers
    (default: ``host``, or this machine's address when ``host`` is a wildcard).
    ``io_timeout`` bounds each reply and data send; ``idle_timeout`` drops silent peers.
    """

    def __init__(
        self,
        pool: torch.Tensor,
        block_bytes: int,
        fingerprint: Fingerprint,
        token: str,
        *,
        backend: str = "tcp",
        host: str = "127.0.0.1",
        port: int = 0,
        advertise_host: str | None = None,
        lease_ttl: float = 30.0,
        on_release: OnRelease | None = None,
        io_timeout: float = 30.0,
        idle_timeout: float = 120.0,
    ):
        if not isinstance(token, str) or not token:
            raise InvalidParams("the holder needs a non-empty shared token")
        if not lease_ttl > 0 or not io_timeout > 0 or not idle_timeout > 0:
            raise InvalidParams("lease_ttl, io_timeout and idle_timeout must be positive seconds")
        self._region = KVRegion(pool, block_bytes)
        self._fingerprint = dict(check_fingerprint(fingerprint))
        self._token = token.encode()
        self._backend = check_backend(backend)
        self._host = host
        self._requested_port = port
        self._advertise_host = advertise_host
        self._lease_ttl = float(lease_ttl)
        self._io_timeout = io_timeout
        self._idle_timeout = idle_timeout
        self._leases = LeaseTable(on_release)
        self._counters = TransferCounters()
        self._listener: Listener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Start listening; after this ``port`` is the bound port and ``grant`` may be called."""
        if self._listener is not None:
            raise RuntimeError("holder already started")
        self._loop = asyncio.get_running_loop()
        self._listener = await listen(self._backend, self._host, self._requested_port, self._serve)
        if self._advertise_host is None:
            self._advertise_host = (
                socket.gethostbyname(socket.gethostname())
                if self._host in _WILDCARD_HOSTS
                else self._host
            )

    async def stop(self) -> None:
        """Stop serving and release every lease still held (its blocks go back via on_release)."""
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        self._leases.close_all()

    async def __aenter__(self) -> KVHolder:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The port fetchers connect to."""
        if self._listener is None:
            raise RuntimeError("holder not started")
        return self._listener.port

    @property
    def backend(self) -> str:
        return self._backend

    def grant(
        self, block_ids: list[int], num_tokens: int, ttl: float | None = None
    ) -> KVTransferParams:
        """Pin ``block_ids`` under a new lease and return the params a fetcher needs.

        Thread-safe: the engine may call it from its own thread.
        """
        if self._listener is None or self._loop is None or self._advertise_host is None:
            raise RuntimeError("holder not started")
        ids = self._region.check_ids(block_ids, "block_ids")
        lease = self._leases.grant(ids, num_tokens, self._lease_ttl if ttl is None else ttl)
        self._loop.call_soon_threadsafe(self._watch_expiry, lease.lease_id)
        return KVTransferParams(
            backend=self._backend,
            host=self._advertise_host,
            port=self.port,
            lease_id=lease.lease_id,
            block_ids=ids,
            num_tokens=num_tokens,
            fingerprint=dict(self._fingerprint),
            block_bytes=self._region.block_bytes,
            expires_at=lease.expires_at,
        )

    def release(self, lease_id: str) -> bool:
        """Release a lease now; False if it was unknown or already closed. Thread-safe."""
        return self._leases.release(lease_id)

    @property
    def active_leases(self) -> int:
        """Leases whose blocks are still pinned."""
        return len(self._leases)

    @property
    def metrics(self) -> HolderMetrics:
        """A snapshot of the holder's counters."""
        return HolderMetrics(
            bytes_sent=self._counters.nbytes,
            transfers=self._counters.transfers,
            failures=self._counters.failures,
            transfer_seconds=self._counters.seconds,
            leases_granted=self._leases.granted,
            leases_released=self._leases.released,
            leases_expired=self._leases.expired,
            active_leases=len(self._leases),
        )

    def _watch_expiry(self, lease_id: str) -> None:
        left = self._leases.seconds_left(lease_id)
        if left is None or self._loop is None:
            return
        if left > 0:
            # Timers run on the monotonic clock and expiry is wall-clock: re-check when due.
            self._loop.call_later(left, self._watch_expiry, lease_id)
        else:
            self._leases.expire_if_due(lease_id)

    async def _serve(self, connection: Connection) -> None:
        while True:
            try:
                async with asyncio.timeout(self._idle_timeout):
                    message = await connection.recv_message()
            except (TimeoutError, TransferError):
                return  # idle too long, or the peer went away: either way, done
            if not await self._answer(connection, message):
                return

    async def _answer(self, connection: Connection, message: dict[str, Any]) -> bool:
        """Answer one request; False when the connection must be closed."""
        try:
            if not hmac.compare_digest(token_of(message).encode(), self._token):
                raise AuthError("wrong token")
            request = parse_request(message)
        except KVTransferError as exc:
            # Unauthenticated or unparsable: answer once, then stop listening to this peer.
            self._counters.failures += 1
            await self._refuse(connection, exc)
            return False
        if isinstance(request, ReleaseRequest):
            if self._leases.release(request.lease_id):
                return await self._reply(connection, ok_reply())
            self._counters.failures += 1
            return await self._refuse(
                connection, LeaseNotFound(f"lease {request.lease_id[:8]}... is not active")
            )
        return await self._serve_read(connection, request)

    async def _serve_read(self, connection: Connection, request: ReadRequest) -> bool:
        try:
            if request.fingerprint != self._fingerprint:
                raise FingerprintMismatch(
                    "KV layouts differ: "
                    + fingerprint_difference(request.fingerprint, self._fingerprint)
                )
            if request.block_bytes != self._region.block_bytes:
                raise FingerprintMismatch(
                    f"block size differs: holder {self._region.block_bytes} bytes, "
                    f"fetcher expects {request.block_bytes}"
                )
            if sum(count for _, count in request.runs) > self._region.num_blocks:
                raise InvalidParams("request names more blocks than the pool holds")
            block_ids = [first + i for first, count in request.runs for i in range(count)]
            self._region.check_ids(block_ids, "requested blocks")
            spans = [
                self._region.span(first, count, request.src_offset, request.length)
                for first, count in request.runs
            ]
            lease = self._leases.acquire(request.lease_id, block_ids)
        except KVTransferError as exc:
            self._counters.failures += 1
            return await self._refuse(connection, exc)
        started = time.perf_counter()
        nbytes = sum(span.numel() for span in spans)
        try:
            crc = await asyncio.to_thread(crc32_of, spans) if request.checksum else None
            async with asyncio.timeout(self._io_timeout):
                await connection.send_message(ok_reply(nbytes=nbytes, crc32=crc))
                await connection.send_spans(spans)
            if request.release:
                # The blocks go back when this read ends (finish_read below), not before.
                self._leases.release(request.lease_id)
        except (TimeoutError, TransferError) as exc:
            self._counters.failures += 1
            log.warning("sending lease %s... failed: %s", request.lease_id[:8], exc or "timeout")
            return False
        finally:
            self._leases.finish_read(lease)
        self._counters.record(nbytes, time.perf_counter() - started)
        return True

    async def _refuse(self, connection: Connection, error: KVTransferError) -> bool:
        return await self._reply(connection, error_reply(error))

    async def _reply(self, connection: Connection, reply: dict[str, Any]) -> bool:
        try:
            async with asyncio.timeout(self._io_timeout):
                await connection.send_message(reply)
        except (TimeoutError, TransferError):
            return False
        return True
