"""The ``tcp`` backend: plain sockets driven by the asyncio loop, for hosts without UCX.

Control messages are a 4-byte big-endian length followed by JSON. Block data follows as raw
bytes. Sends go straight out of the pool tensor's memory (``sock_sendall`` on a memoryview of
the storage) and receives land straight in it (``sock_recv_into``), so on CPU no block byte is
copied by Python. A pool on another device (CUDA) is staged through host memory, which this
backend cannot avoid; use ``ucx`` there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from typing import Any

import torch

from kvtransfer.errors import TransferError
from kvtransfer.protocol import MAX_MESSAGE_BYTES, decode_message, encode_message
from kvtransfer.transport import Handler

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">I")


def _configure(sock: socket.socket) -> None:
    sock.setblocking(False)
    # Control messages are tiny and each waits for an answer: don't let Nagle hold them back.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _cpu_bytes(span: torch.Tensor) -> memoryview:
    return memoryview(span.numpy())


class TcpConnection:
    """A connected, non-blocking socket speaking the kvtransfer framing.

    Kept between fetches: an idle socket costs the holder nothing, its read sleeps in epoll.
    """

    def __init__(self, sock: socket.socket):
        _configure(sock)
        self._sock = sock
        self._closed = False

    @classmethod
    async def connect(cls, host: str, port: int, timeout: float) -> TcpConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                family, kind, proto, _, address = infos[0]
                sock = socket.socket(family, kind, proto)
                try:
                    sock.setblocking(False)
                    await loop.sock_connect(sock, address)
                except BaseException:
                    sock.close()
                    raise
        except TimeoutError as exc:
            raise TransferError(f"no answer from holder {host}:{port} within {timeout} s") from exc
        except OSError as exc:
            raise TransferError(f"cannot reach holder {host}:{port}: {exc}") from exc
        return cls(sock)

    async def send_message(self, message: dict[str, Any]) -> None:
        data = encode_message(message)
        await self._sendall(memoryview(_HEADER.pack(len(data)) + data))

    async def recv_message(self) -> dict[str, Any]:
        header = bytearray(_HEADER.size)
        await self._recv_into(memoryview(header))
        (size,) = _HEADER.unpack(header)
        if size > MAX_MESSAGE_BYTES:
            raise TransferError(f"peer announced a {size}-byte control message; stream is corrupt")
        body = bytearray(size)
        await self._recv_into(memoryview(body))
        return decode_message(body)

    async def send_spans(self, spans: list[torch.Tensor]) -> None:
        for span in spans:
            host = span if span.device.type == "cpu" else span.cpu()
            await self._sendall(_cpu_bytes(host))

    async def recv_spans(self, spans: list[torch.Tensor]) -> None:
        for span in spans:
            if span.device.type == "cpu":
                await self._recv_into(_cpu_bytes(span))
            else:
                staged = torch.empty(span.numel(), dtype=torch.uint8)
                await self._recv_into(_cpu_bytes(staged))
                span.copy_(staged)

    def is_alive(self) -> bool:
        if self._closed:
            return False
        try:
            self._sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            # Nothing to read is what a live, idle connection looks like.
            return True
        except OSError:
            return False
        # EOF, or bytes nobody asked for: either way this connection cannot be reused.
        return False

    def abort(self) -> None:
        self._closed = True
        self._sock.close()

    async def _sendall(self, data: memoryview) -> None:
        try:
            await asyncio.get_running_loop().sock_sendall(self._sock, data)
        except OSError as exc:
            raise TransferError(f"connection to peer broke while sending: {exc}") from exc

    async def _recv_into(self, view: memoryview) -> None:
        loop = asyncio.get_running_loop()
        total = len(view)
        done = 0
        while done < total:
            try:
                got = await loop.sock_recv_into(self._sock, view[done:])
            except OSError as exc:
                raise TransferError(
                    f"connection to peer broke after {done} of {total} bytes: {exc}"
                ) from exc
            if got == 0:
                raise TransferError(f"peer closed the connection after {done} of {total} bytes")
            done += got


class TcpListener:
    """A listening socket that runs the handler on every accepted connection."""

    def __init__(self, sock: socket.socket, handler: Handler):
        self._sock = sock
        self._handler = handler
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting = asyncio.create_task(self._accept_loop())

    @classmethod
    async def start(cls, host: str, port: int, handler: Handler) -> TcpListener:
        try:
            sock = socket.create_server((host, port), backlog=128)
        except OSError as exc:
            raise TransferError(f"cannot listen on {host}:{port}: {exc}") from exc
        sock.setblocking(False)
        return cls(sock, handler)

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    async def close(self) -> None:
        self._accepting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._accepting
        self._sock.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(self._sock)
            except OSError as exc:
                # Out of file descriptors and the like: back off rather than spin.
                log.warning("accepting a kvtransfer connection failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            task = asyncio.create_task(self._serve(TcpConnection(sock)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, connection: TcpConnection) -> None:
        try:
            await self._handler(connection)
        finally:
            connection.abort()
