"""An httpx transport for thousands of concurrent streams: HTTP/1.1 on asyncio protocols.

httpx's default transport runs every received chunk through several layers (httpcore, h11,
anyio cancel scopes) and scans its whole pool on every request, which costs tens of
microseconds a token; at a few hundred open streams the client then becomes the bottleneck
and its own delay shows up in the TTFT it reports. This transport parses the response head
and the chunked framing itself, straight from the event loop's `data_received`, and keeps
idle connections in a free list. httpx still builds requests and presents responses, so
callers use an ordinary `httpx.AsyncClient`. It does not do proxies, HTTP/2 or `Expect:
100-continue`, which an OpenAI-compatible server does not need.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from time import perf_counter

import httpx

_Key = tuple[str, str, int]  # scheme, host, port
Sink = Callable[[bytes, float], None]  # body bytes and the perf_counter() of their arrival

# A request extension: a Sink that takes a successful (2xx), uncompressed response body as it
# arrives, inside the event loop's read callback, instead of the body being queued for
# iteration. Iterating the response then yields nothing and only waits for its end: one task
# wake-up per response instead of one per network read, which matters when thousands stream
# at once. Responses whose body went to the sink carry the DIVERTED extension.
SINK = "loadgen.sink"
DIVERTED = "loadgen.diverted"


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection, one request at a time; the response body is queued as it
    arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False
        self.reusable = True
        self.got_response = False  # any byte of a response arrived
        self._state = "idle"  # idle | head | length | chunked | close | done
        self._head: asyncio.Future[tuple[int, list[tuple[bytes, bytes]]]] | None = None
        self._body: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self._error: httpx.TransportError | None = None
        self._left = 0  # bytes left in the body (length) or in the current chunk
        self._chunk_state = "size"  # size | data | crlf | trailers
        self._sink: Sink | None = None  # offered with the request...
        self.diverted = False  # ...and taken: the body goes to it, not to `chunks`
        self._now = 0.0  # arrival of the bytes being parsed

    # --- event loop callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._state in ("idle", "done"):
            self.reusable = False  # bytes nobody asked for: the stream is out of step
            return
        self.got_response = True
        self._now = perf_counter()
        self.buffer += data
        try:
            self._parse()
        except (ValueError, IndexError) as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP response: {exc}"))

    def eof_received(self) -> bool:
        self._lost()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()

    # --- parsing --------------------------------------------------------------------------

    def _parse(self) -> None:
        if self._state == "head":
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buffer[:end]).split(b"\r\n")
            del self.buffer[: end + 4]
            status = int(lines[0].split(b" ", 2)[1])
            headers = []
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers.append((name.strip(), value.strip()))
            self._frame(status, headers)
            assert self._head is not None
            self._head.set_result((status, headers))
        if self._state == "length":
            take = min(self._left, len(self.buffer))
            if take:
                self._push(bytes(self.buffer[:take]))
                del self.buffer[:take]
                self._left -= take
            if self._left == 0:
                self._done()
        elif self._state == "chunked":
            self._parse_chunks()
        elif self._state == "close" and self.buffer:
            self._push(bytes(self.buffer))
            self.buffer.clear()

    def _frame(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """Choose how the body is delimited, from the status and headers."""
        fields = {name.lower(): value.lower() for name, value in headers}
        if fields.get(b"connection") == b"close":
            self.reusable = False
        # Decided here, before any body byte is parsed, so every byte reaches the sink with
        # the time it arrived.
        identity = fields.get(b"content-encoding", b"identity") == b"identity"
        self.diverted = self._sink is not None and identity and 200 <= status < 300
        if not self.diverted:
            self._sink = None
        if status in (204, 304):
            self._state, self._left = "length", 0
        elif b"chunked" in fields.get(b"transfer-encoding", b""):
            self._state, self._chunk_state = "chunked", "size"
        elif b"content-length" in fields:
            self._state, self._left = "length", int(fields[b"content-length"])
        else:
            self._state, self.reusable = "close", False

    def _parse_chunks(self) -> None:
        buffer = self.buffer
        while buffer:
            if self._chunk_state == "data":
                take = min(self._left, len(buffer))
                self._push(bytes(buffer[:take]))
                del buffer[:take]
                self._left -= take
                if self._left:
                    return
                self._chunk_state = "crlf"
            elif self._chunk_state == "crlf":
                if len(buffer) < 2:
                    return
                if buffer[:2] != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
                del buffer[:2]
                self._chunk_state = "size"
            else:
                end = buffer.find(b"\r\n")
                if end < 0:
                    return
                line = bytes(buffer[:end])
                del buffer[: end + 2]
                if self._chunk_state == "trailers":
                    if not line:
                        self._done()
                        return
                    continue
                self._left = int(line.split(b";", 1)[0], 16)
                self._chunk_state = "data" if self._left else "trailers"

    # --- state changes --------------------------------------------------------------------

    def _push(self, data: bytes) -> None:
        if self.diverted:
            self._sink(data, self._now)  # type: ignore[misc]
            return
        self._body.append(data)
        self._wake()

    def _done(self) -> None:
        self._state = "done"
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, error: httpx.TransportError) -> None:
        self._error = error
        self.reusable = False
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        self._wake()
        if self.transport is not None:
            self.transport.close()

    def _lost(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.reusable = False
        if self._state == "close":
            self._done()
        elif self._state == "head":
            self._fail(httpx.RemoteProtocolError("server disconnected without a response"))
        elif self._state in ("length", "chunked"):
            self._fail(httpx.RemoteProtocolError("server closed the connection mid-body"))

    # --- used by the transport ------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Whether a new request can go on this connection now."""
        return self._state == "idle" and self.reusable and not self.closed

    async def request(
        self, head: bytes, body: bytes, sink: Sink | None
    ) -> tuple[int, list[tuple[bytes, bytes]]]:
        """Send a request; returns the response status and headers. A 2xx uncompressed body
        goes to `sink`, if given, and `diverted` tells whether it did."""
        assert self.transport is not None and self.idle
        self._state = "head"
        self.got_response = False
        self._sink = sink
        self.diverted = False
        self._head = asyncio.get_running_loop().create_future()
        self.transport.write(head + body)
        return await self._head

    async def chunks(self) -> AsyncIterator[bytes]:
        """The response body as it arrives; what arrived together comes as one piece."""
        loop = asyncio.get_running_loop()
        while True:
            if self._body:
                data = b"".join(self._body) if len(self._body) > 1 else self._body[0]
                self._body.clear()
                yield data
                continue
            if self._error is not None:
                raise self._error
            if self._state == "done":
                return
            self._waiter = loop.create_future()
            await self._waiter
            self._waiter = None

    def finish(self) -> bool:
        """End the current exchange; True if the connection can take another request."""
        self._sink = None
        self.diverted = False
        if self._state == "done" and not self.buffer and self.reusable and not self.closed:
            self._state = "idle"
            self._body.clear()
            return True
        self.reusable = False
        if self.transport is not None:
            self.transport.close()
        return False


class _Body(httpx.AsyncByteStream):
    def __init__(self, pool: StreamingTransport, key: _Key, connection: _Connection) -> None:
        self._pool = pool
        self._key = key
        self._connection = connection

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._connection.chunks():
            yield part

    async def aclose(self) -> None:
        self._pool.release(self._key, self._connection)


class StreamingTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 connections kept per origin in a free list; no limit on their number."""

    def __init__(self) -> None:
        self._idle: dict[_Key, list[_Connection]] = defaultdict(list)
        self._busy: set[_Connection] = set()
        self._ssl: ssl.SSLContext | None = None

    async def _open(self, key: _Key) -> _Connection:
        scheme, host, port = key
        context = None
        if scheme == "https":
            self._ssl = self._ssl or httpx.create_ssl_context()
            context = self._ssl
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                _Connection, host, port, ssl=context, server_hostname=host if context else None
            )
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        return connection

    def release(self, key: _Key, connection: _Connection) -> None:
        """Take `connection` back after its response: idle if reusable, else closed."""
        self._busy.discard(connection)
        if connection.finish():
            self._idle[key].append(connection)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` on an idle connection to its origin, or on a new one."""
        url = request.url
        key = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        body = await request.aread()
        head = b"%s %s HTTP/1.1\r\n%s\r\n" % (
            request.method.encode(),
            url.raw_path,
            b"".join(b"%s: %s\r\n" % pair for pair in request.headers.raw),
        )
        idle = self._idle[key]
        while True:
            reused = bool(idle)
            connection = idle.pop() if idle else await self._open(key)
            if not connection.idle:
                connection.finish()
                continue
            self._busy.add(connection)
            try:
                status, headers = await connection.request(
                    head, body, request.extensions.get(SINK)
                )
            except httpx.RemoteProtocolError:
                self._busy.discard(connection)
                connection.finish()
                # A kept-alive connection the server closed just as it was reused: nothing
                # was answered, so the request goes again on another connection.
                if reused and not connection.got_response:
                    continue
                raise
            except BaseException:
                self._busy.discard(connection)
                connection.finish()
                raise
            extensions = {DIVERTED: True} if connection.diverted else {}
            stream = _Body(self, key, connection)
            return httpx.Response(status, headers=headers, stream=stream, extensions=extensions)

    async def aclose(self) -> None:
        """Close every connection, idle or busy."""
        for connection in [c for idle in self._idle.values() for c in idle] + list(self._busy):
            connection.finish()
        self._idle.clear()
        self._busy.clear()
