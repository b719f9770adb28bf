"""An httpx transport whose cost per request does not grow with the number of open streams.

httpx's default pool (httpcore's) scans every connection it holds on each request and each
response close, so with a thousand streams open the client spends its time in that scan and
its own latency shows up in the TTFT it reports. Here idle connections wait in a free list:
taking or returning one is O(1). Each connection is httpcore's own HTTP/1.1 connection.
"""

from __future__ import annotations

import ssl
from collections import defaultdict
from collections.abc import AsyncIterator

import httpcore
import httpx

_Key = tuple[bytes, bytes, int]


def _key(origin: httpcore.Origin) -> _Key:
    """Origins are not hashable; their parts are."""
    return origin.scheme, origin.host, origin.port


def _httpx_error(exc: httpcore.ProxyError | Exception) -> httpx.TransportError:
    """The httpx exception of the same name as an httpcore one (httpx mirrors them all)."""
    kind = getattr(httpx, type(exc).__name__, httpx.TransportError)
    if not (isinstance(kind, type) and issubclass(kind, httpx.TransportError)):
        kind = httpx.TransportError
    return kind(str(exc) or type(exc).__name__)


class _Body(httpx.AsyncByteStream):
    """A response body that hands its connection back to the pool once read and closed."""

    def __init__(self, pool: FreeListTransport, origin: httpcore.Origin,
                 connection: httpcore.AsyncHTTPConnection, response: httpcore.Response) -> None:
        self._pool = pool
        self._origin = origin
        self._connection = connection
        self._stream = response.stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._stream:  # type: ignore[union-attr]
                yield part
        except httpcore.NetworkError as exc:
            raise _httpx_error(exc) from exc
        except httpcore.ProtocolError as exc:
            raise _httpx_error(exc) from exc

    async def aclose(self) -> None:
        await self._stream.aclose()  # type: ignore[union-attr]
        self._pool.release(self._origin, self._connection)


class FreeListTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 connections kept per origin in a free list; no limits on their number."""

    def __init__(self) -> None:
        self._idle: dict[_Key, list[httpcore.AsyncHTTPConnection]] = defaultdict(list)
        self._busy: set[httpcore.AsyncHTTPConnection] = set()
        self._ssl: ssl.SSLContext | None = None

    async def _take(self, origin: httpcore.Origin) -> tuple[httpcore.AsyncHTTPConnection, bool]:
        """An idle connection to `origin` and True, or a new one and False."""
        idle = self._idle[_key(origin)]
        while idle:
            connection = idle.pop()  # the most recently used: least likely to have timed out
            if connection.is_available() and not connection.has_expired():
                return connection, True
            await connection.aclose()  # the server closed it while it was idle
        if origin.scheme == b"https" and self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        return httpcore.AsyncHTTPConnection(origin, ssl_context=self._ssl), False

    def release(self, origin: httpcore.Origin, connection: httpcore.AsyncHTTPConnection) -> None:
        """Take `connection` back: idle again if it can be reused, else forgotten (closed)."""
        self._busy.discard(connection)
        if connection.is_idle():
            self._idle[_key(origin)].append(connection)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` on a free connection, opening one if none is idle."""
        url = httpcore.URL(
            scheme=request.url.raw_scheme,
            host=request.url.raw_host,
            port=request.url.port,
            target=request.url.raw_path,
        )
        core = httpcore.Request(request.method, url, headers=request.headers.raw,
                                content=request.stream, extensions=request.extensions)
        connection, reused = await self._take(url.origin)
        self._busy.add(connection)
        try:
            response = await connection.handle_async_request(core)
        except (httpcore.NetworkError, httpcore.ProtocolError) as exc:
            await connection.aclose()
            self._busy.discard(connection)
            if not reused:
                raise _httpx_error(exc) from exc
            # The server may close a kept-alive connection just as it is reused; nothing was
            # answered, so one fresh connection is a safe retry.
            return await self.handle_async_request(request)
        except (httpcore.TimeoutException, httpcore.UnsupportedProtocol) as exc:
            await connection.aclose()
            self._busy.discard(connection)
            raise _httpx_error(exc) from exc
        return httpx.Response(response.status, headers=response.headers,
                              stream=_Body(self, url.origin, connection, response),
                              extensions=response.extensions)

    async def aclose(self) -> None:
        """Close every connection, idle or busy."""
        connections = [c for idle in self._idle.values() for c in idle] + list(self._busy)
        self._idle.clear()
        self._busy.clear()
        for connection in connections:
            await connection.aclose()
