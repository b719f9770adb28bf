"""Connections the worker and the router accept stream without Nagle's delay."""

from __future__ import annotations

import asyncio
import socket

import pytest

from services.listen_socket import tcp_listener


async def test_accepted_connections_have_nagle_turned_off():
    listener = tcp_listener("127.0.0.1", 0)
    port = listener.getsockname()[1]
    seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(accepted, sock=listener)
    async with server:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(seen, 10) != 0
        writer.close()


def test_a_taken_port_is_an_os_error():
    first = tcp_listener("127.0.0.1", 0)
    with pytest.raises(OSError):
        tcp_listener("127.0.0.1", first.getsockname()[1])
    first.close()
