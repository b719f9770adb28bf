"""The ``ucx`` backend: UCX tagged send/recv through ``ucxx``, straight from and into the pool.

A control message is one tagged message, its length in the first 8 bytes, received into a
buffer of the largest allowed size (UCX accepts a shorter message into a longer buffer): one
message instead of a length and a body halves the per-request overhead. Each span is posted
as one tagged message whose buffer is the pool's own memory (a NumPy view of a CPU tensor, the
tensor itself on CUDA via ``__cuda_array_interface__``), so UCX reads and writes the
registered pool directly. All spans of a read are posted at once, each with its own
tag, so UCX pipelines them. A receive is posted with the exact span length, so a short or long
message fails with a truncation error instead of being accepted.

Environment, as found with ucxx-cu12 0.52 / libucx-cu12 1.21:

- No variable is required on CPU. ``import ucxx`` sets ``UCX_MEMTYPE_CACHE=n``, which UCX
  1.21 no longer knows and warns about on stderr; this module sets
  ``UCX_WARN_UNUSED_ENV_VARS=n`` (unless already set) to keep worker logs clean.
- Endpoints are created with peer error handling, so a holder that dies mid-transfer makes the
  fetcher's receive fail at once (``Connection reset by remote peer``) instead of hanging. UCX
  excludes shared-memory transports (``posix``, ``sysv``, ``cma``) from endpoints with error
  handling, so on a CPU-only host every transfer runs over ``tcp`` on loopback even though
  ``UCX_TLS`` defaults to ``all``; ``UCX_PROTO_INFO=y`` prints the chosen protocols. On a GPU
  cluster UCX picks RDMA or CUDA transports where they support error handling; check the
  choice there with ``UCX_PROTO_INFO=y`` too. ``UCX_TLS`` and the other ``UCX_*`` variables
  can narrow or tune it.
- On such a host the ``tcp`` backend is the faster choice (``bench/kvtransfer_bandwidth.py``
  prints both): UCX's tcp transport stages rendezvous data through bounce buffers.
  ``UCX_RNDV_SCHEME=put_zcopy`` lifted raw and kvtransfer UCX throughput alike there (about
  1.8x in one run); it is left unset because UCX's own choice is the right one on RDMA/NVLink.
- ``RAPIDS_NO_INITIALIZE`` is not needed: UCX is initialised lazily, on the first listener or
  endpoint, so importing this module creates no context, and the tcp backend never imports it.
- The listener binds every interface; the port is the only address it takes.
- ``UCXPY_ENABLE_PYTHON_FUTURE`` defaults to ``1`` here (see "Waiting" below); setting it to
  ``0`` brings back the spinning wait.

Waiting. Without its notifier thread, ucxx completes an awaited request by yielding to the
event loop until the request is done, so a holder waiting for the next request on an idle
endpoint spins a core (measured: decode TPOT 33 -> 37 ms beside it, 1P+1D at one thread
each). With the notifier thread, a request's completion sets an asyncio future and an idle
process sleeps. That thread is bound to the event loop running when it starts and keeps the
process alive until it is stopped, so it runs exactly while a listener or a fetcher of this
process uses UCX: the first one starts it (``hold``), the last one stops it (``let_go``, up
to one second, as the thread wakes once a second to look for the stop).
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import Awaitable, Coroutine
from typing import Any

import torch

os.environ.setdefault("UCX_WARN_UNUSED_ENV_VARS", "n")
os.environ.setdefault("UCXPY_ENABLE_PYTHON_FUTURE", "1")

import ucxx  # noqa: E402  (the environment above must be set before UCX loads)
import ucxx.core  # noqa: E402
from ucxx.exceptions import UCXError  # noqa: E402

from kvtransfer.errors import TransferError  # noqa: E402
from kvtransfer.protocol import MAX_MESSAGE_BYTES, decode_message, encode_message  # noqa: E402
from kvtransfer.transport import Handler  # noqa: E402

_HEADER = struct.Struct("<Q")
# Bound how long closing an endpoint may block the event loop (nanoseconds).
_CLOSE_PERIOD_NS = 100_000_000


_users = 0  # listeners and fetchers of this process using UCX right now


def hold() -> None:
    """One more user of UCX in this process: make sure the notifier thread runs."""
    global _users
    context = ucxx.core._get_ctx()  # ucxx exposes no public handle on its notifier
    if context.notifier_thread is None:
        context.start_notifier_thread()  # a no-op when Python futures are turned off
    _users += 1


def let_go() -> None:
    """One user fewer; the last one stops the notifier thread, so the process can exit."""
    global _users
    _users -= 1
    if _users == 0:
        ucxx.stop_notifier_thread()


def _buffer(span: torch.Tensor) -> Any:
    # ucxx takes the buffer protocol on host and __cuda_array_interface__ on device; a torch
    # CPU tensor offers neither, its NumPy view (same memory) does.
    return span.numpy() if span.device.type == "cpu" else span


async def _all(operations: list[Coroutine[Any, Any, Any]]) -> None:
    """Run every operation concurrently; on the first failure cancel the rest, then re-raise."""
    tasks = [asyncio.ensure_future(op) for op in operations]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _ucx(operation: Awaitable[Any], what: str) -> Any:
    try:
        return await operation
    except UCXError as exc:
        raise TransferError(f"UCX {what} failed: {exc}") from exc


class UcxConnection:
    """One ucxx endpoint speaking the kvtransfer framing.

    Kept between fetches: with the notifier thread (see "Waiting" above) a holder waiting on
    an idle endpoint sleeps. One endpoint per fetch, tried before that, crashed decode workers
    now and then (a segfault inside a KV pull, twice in three full test runs), most likely an
    endpoint torn down by abort() while ucxx still referenced it.
    """

    def __init__(self, endpoint: Any):
        self._ep = endpoint
        self._inbox: bytearray | None = None

    @classmethod
    async def connect(cls, host: str, port: int, timeout: float) -> UcxConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                # UCX connects to an address, not a name.
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                address = str(infos[0][4][0])
                endpoint = await ucxx.create_endpoint(address, port, connect_timeout=timeout)
        except TimeoutError as exc:
            raise TransferError(f"no answer from holder {host}:{port} within {timeout} s") from exc
        except (OSError, UCXError) as exc:
            raise TransferError(f"cannot reach holder {host}:{port}: {exc}") from exc
        return cls(endpoint)

    async def send_message(self, message: dict[str, Any]) -> None:
        data = encode_message(message)
        await _ucx(self._ep.send(bytearray(_HEADER.pack(len(data)) + data)), "send")

    async def recv_message(self) -> dict[str, Any]:
        if self._inbox is None:
            self._inbox = bytearray(_HEADER.size + MAX_MESSAGE_BYTES)
        await _ucx(self._ep.recv(self._inbox), "receive")
        (size,) = _HEADER.unpack_from(self._inbox)
        if size > MAX_MESSAGE_BYTES:
            raise TransferError(f"peer announced a {size}-byte control message; stream is corrupt")
        return decode_message(self._inbox[_HEADER.size : _HEADER.size + size])

    async def send_spans(self, spans: list[torch.Tensor]) -> None:
        sends = [self._ep.send(_buffer(span), tag=i) for i, span in enumerate(spans)]
        await _ucx(_all(sends), "send")

    async def recv_spans(self, spans: list[torch.Tensor]) -> None:
        recvs = [self._ep.recv(_buffer(span), tag=i) for i, span in enumerate(spans)]
        await _ucx(_all(recvs), "receive")

    def is_alive(self) -> bool:
        return not self._ep.closed

    def abort(self) -> None:
        # Closing the endpoint cancels its outstanding requests, so no receive writes after this.
        self._ep.abort(period=_CLOSE_PERIOD_NS)


class UcxListener:
    """A ucxx listener that runs the handler on every accepted endpoint."""

    def __init__(self, handler: Handler):
        self._handler = handler
        self._listener: Any = None
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()

    @classmethod
    async def start(cls, port: int, handler: Handler) -> UcxListener:
        listener = cls(handler)
        hold()
        try:
            listener._listener = ucxx.create_listener(listener._on_connect, port)
        except UCXError as exc:
            let_go()
            raise TransferError(f"cannot listen on UCX port {port}: {exc}") from exc
        return listener

    @property
    def port(self) -> int:
        return int(self._listener.port)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._listener.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        let_go()

    async def _on_connect(self, endpoint: Any) -> None:
        # ucxx starts this coroutine itself; remember its task so close() can cancel it.
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        connection = UcxConnection(endpoint)
        try:
            await self._handler(connection)
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]
            connection.abort()
