"""What a backend provides: connections that carry control messages and raw byte spans.

The holder and fetcher hold all protocol logic; a backend only moves bytes, straight from and
into views of the registered pool (no staging copies where the backend allows it). Every
failure of the underlying library surfaces as ``TransferError``; timeouts are applied by the
callers around these awaits, and ``abort`` stops any I/O still in flight before an error is
raised to the user.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import torch

from kvtransfer.errors import InvalidParams
from kvtransfer.params import BACKENDS


class Connection(Protocol):
    """One peer-to-peer connection; one request/reply exchange at a time.

    The fetcher keeps it open between fetches, so a holder waiting on an idle connection must
    sleep, not poll (see the ucx backend's notes on waiting).
    """

    async def send_message(self, message: dict[str, Any]) -> None:
        """Send one control message."""

    async def recv_message(self) -> dict[str, Any]:
        """Receive one control message."""

    async def send_spans(self, spans: list[torch.Tensor]) -> None:
        """Send the bytes of each uint8 view, in order."""

    async def recv_spans(self, spans: list[torch.Tensor]) -> None:
        """Fill each uint8 view with exactly its length of bytes, in order."""

    def is_alive(self) -> bool:
        """False once the peer or we closed the connection."""

    def abort(self) -> None:
        """Close at once; no data is written into any span after this returns."""


class Listener(Protocol):
    """Accepts connections and runs the handler on each."""

    @property
    def port(self) -> int:
        """The port actually bound (useful when asked for port 0)."""

    async def close(self) -> None:
        """Stop accepting and abort every open connection."""


Handler = Callable[[Connection], Awaitable[None]]


def check_backend(backend: str) -> str:
    """Return ``backend`` if it is known, else raise InvalidParams listing the choices."""
    if backend not in BACKENDS:
        raise InvalidParams(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    return backend


def hold(backend: str) -> None:
    """A fetcher starts using ``backend``: keep its process-wide machinery running (ucx only)."""
    if check_backend(backend) == "ucx":
        from kvtransfer.ucx_transport import hold as hold_ucx

        hold_ucx()


def let_go(backend: str) -> None:
    """The fetcher that called ``hold`` is done with ``backend``."""
    if check_backend(backend) == "ucx":
        from kvtransfer.ucx_transport import let_go as let_go_ucx

        let_go_ucx()


async def listen(backend: str, host: str, port: int, handler: Handler) -> Listener:
    """Start accepting connections for ``backend`` on ``host:port`` (0 picks a free port)."""
    if check_backend(backend) == "ucx":
        # Imported on use: ucxx loads UCX and its progress thread, which the tcp path never needs.
        from kvtransfer.ucx_transport import UcxListener

        return await UcxListener.start(port, handler)
    from kvtransfer.tcp_transport import TcpListener

    return await TcpListener.start(host, port, handler)


async def connect(backend: str, host: str, port: int, timeout: float) -> Connection:
    """Open a connection to a holder; TransferError if it cannot be reached in ``timeout``."""
    if check_backend(backend) == "ucx":
        from kvtransfer.ucx_transport import UcxConnection

        return await UcxConnection.connect(host, port, timeout)
    from kvtransfer.tcp_transport import TcpConnection

    return await TcpConnection.connect(host, port, timeout)
