"""The listening socket the worker and the router hand to uvicorn."""

from __future__ import annotations

import socket

BACKLOG = 2048


def tcp_listener(host: str, port: int) -> socket.socket:
    """A TCP socket listening on (host, port).

    Made with proto IPPROTO_TCP, not 0: every connection it accepts inherits its proto, and
    asyncio turns off Nagle's algorithm (TCP_NODELAY) only on sockets whose proto says TCP. With
    Nagle on, a streamed token written while the previous segment waited for its ACK sat until
    the peer's delayed ACK came, up to 40 ms: a request sent right after another finished got
    its first token 40-50 ms late.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock
