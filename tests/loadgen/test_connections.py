"""The streaming HTTP/1.1 transport against a real socket server with every body framing."""

import asyncio
import gzip
from collections.abc import AsyncIterator

import httpx
import pytest

from loadgen.connections import DIVERTED, SINK, StreamingTransport

CHUNKED = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: y\r\n\r\n"
GZIPPED = gzip.compress(b"hello")
RESPONSES = {
    b"/length": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED,
    b"/empty": b"HTTP/1.1 204 No Content\r\n\r\n",
    b"/error": b'HTTP/1.1 429 Too Many\r\nContent-Length: 11\r\n\r\n{"e": "no"}',
    b"/gzip": b"HTTP/1.1 200 OK\r\nContent-Encoding: GZIP\r\nContent-Length: %d\r\n\r\n%s"
    % (len(GZIPPED), GZIPPED),
}


class Server:
    """A plain asyncio HTTP/1.1 server that answers by path and counts its connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                served += 1
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                path = head.split(b" ")[1]
                if path == b"/echo":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(body), body))
                elif path == b"/bytewise":
                    response = RESPONSES[b"/chunked"]
                    for i in range(len(response)):
                        writer.write(response[i:i + 1])
                        await writer.drain()
                        await asyncio.sleep(0)
                elif path == b"/flaky" and served > 1:
                    break  # a keep-alive timeout that strikes as the next request arrives
                elif path == b"/flaky":
                    writer.write(RESPONSES[b"/length"])
                elif path == b"/close":
                    writer.write(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
                    break
                elif path == b"/hangup":
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
                    break
                elif path == b"/garbage":
                    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
                    break
                else:
                    writer.write(RESPONSES[path])
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture()
async def served() -> AsyncIterator[tuple[Server, str]]:
    server = Server()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield server, f"http://127.0.0.1:{port}"
        for writer in server.writers:
            writer.close()


async def _get(client: httpx.AsyncClient, path: str, body: bytes = b"") -> tuple[int, bytes]:
    async with client.stream("POST", path, content=body) as response:
        return response.status_code, b"".join([part async for part in response.aiter_bytes()])


async def test_every_framing_and_connection_reuse(served) -> None:
    server, url = served
    async with httpx.AsyncClient(base_url=url, transport=StreamingTransport()) as client:
        assert await _get(client, "/length") == (200, b"hello")
        assert await _get(client, "/chunked") == (200, b"hello world")
        assert await _get(client, "/bytewise") == (200, b"hello world")
        assert await _get(client, "/empty") == (204, b"")
        assert await _get(client, "/echo", b"x" * 200_000) == (200, b"x" * 200_000)
        response = await client.post("/error")
        assert response.status_code == 429 and response.json() == {"e": "no"}
        assert server.connections == 1  # one kept-alive connection served them all


async def test_a_sink_takes_successful_bodies_as_they_arrive(served) -> None:
    server, url = served
    received: list[tuple[bytes, float]] = []

    def sink(data: bytes, now: float) -> None:
        received.append((data, now))

    async with httpx.AsyncClient(base_url=url, transport=StreamingTransport()) as client:
        for path in ("/bytewise", "/length"):
            received.clear()
            async with client.stream("POST", path, extensions={SINK: sink}) as response:
                assert response.extensions[DIVERTED] is True
                assert [part async for part in response.aiter_raw()] == []
            expected = b"hello world" if path == "/bytewise" else b"hello"
            assert b"".join(data for data, _ in received) == expected
            times = [now for _, now in received]
            assert times == sorted(times) and len(times) >= 1
        # A compressed body is not diverted: httpx decodes it.
        async with client.stream("POST", "/gzip", extensions={SINK: sink}) as response:
            assert DIVERTED not in response.extensions
            assert await response.aread() == b"hello"
        # An error body is not diverted: it is read like any other.
        received.clear()
        async with client.stream("POST", "/error", extensions={SINK: sink}) as response:
            assert DIVERTED not in response.extensions
            assert await response.aread() == b'{"e": "no"}'
        assert received == []
        assert server.connections == 1


async def test_concurrent_streams_get_their_own_connections(served) -> None:
    server, url = served
    async with httpx.AsyncClient(base_url=url, transport=StreamingTransport()) as client:
        results = await asyncio.gather(*(_get(client, "/bytewise") for _ in range(5)))
        assert results == [(200, b"hello world")] * 5
        assert server.connections == 5
        await asyncio.gather(*(_get(client, "/length") for _ in range(5)))
        assert server.connections == 5


async def test_a_body_until_close_and_a_reconnect_after_it(served) -> None:
    server, url = served
    async with httpx.AsyncClient(base_url=url, transport=StreamingTransport()) as client:
        assert await _get(client, "/close") == (200, b"until the end")
        assert await _get(client, "/length") == (200, b"hello")
        assert server.connections == 2


async def test_an_idle_connection_the_server_closed_is_replaced(served) -> None:
    server, url = served
    async with httpx.AsyncClient(base_url=url, transport=StreamingTransport()) as client:
        assert await _get(client, "/length") == (200, b"hello")
        server.writers[0].close()
        await server.writers[0].wait_closed()
        assert await _get(client, "/length") == (200, b"hello")
        assert server.connections == 2


async def test_a_kept_alive_connection_dropped_under_a_request_is_retried(served) -> None:
    server, url = served
    async with httpx.AsyncClient(base_url=url, transport=StreamingTransport()) as client:
        assert await _get(client, "/flaky") == (200, b"hello")
        assert await _get(client, "/flaky") == (200, b"hello")
        assert server.connections == 2


async def test_broken_responses_raise_httpx_errors(served) -> None:
    _, url = served
    async with httpx.AsyncClient(base_url=url, transport=StreamingTransport()) as client:
        with pytest.raises(httpx.RemoteProtocolError, match="mid-body"):
            await _get(client, "/hangup")
        with pytest.raises(httpx.RemoteProtocolError, match="malformed HTTP response"):
            await _get(client, "/garbage")
        assert await _get(client, "/length") == (200, b"hello")


async def test_nothing_listening_is_a_connect_error(free_url: str) -> None:
    async with httpx.AsyncClient(base_url=free_url, transport=StreamingTransport()) as client:
        with pytest.raises(httpx.ConnectError):
            await client.post("/anything")
