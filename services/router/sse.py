"""Server-Sent Events out, and noticing a client that went away while we work for it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

DONE = b"data: [DONE]\n\n"
HEADERS = {
    "cache-control": "no-cache",
    "x-accel-buffering": "no",  # proxies must pass each event on at once
}

T = TypeVar("T")


class ClientGone(Exception):
    """The client closed its connection before the response was ready."""


def event(data: dict[str, Any]) -> bytes:
    """One SSE event: `data: {...}` and a blank line."""
    return (
        b"data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
    )


async def wait_disconnect(receive: Receive) -> None:
    """Return once the client has disconnected (the request body must already be read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it and raising ClientGone if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(wait_disconnect(request.receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        finished = task.done()
        if not finished:
            task.cancel()
    await asyncio.gather(watch, return_exceptions=True)
    if not finished:
        await asyncio.gather(task, return_exceptions=True)  # let it clean up (abort workers)
        raise ClientGone()
    return task.result()


class SSEResponse(Response):
    """An ASGI response streaming `events`; stops (closing `events`) when the client leaves.

    Starlette's StreamingResponse notices a disconnect only on the next write under newer ASGI
    servers; here a watcher cancels the stream at once, so workers stop generating for nobody.
    """

    def __init__(
        self,
        events: AsyncGenerator[bytes, None],
        on_close: Callable[[bool], None] | None = None,
    ):
        self.events = events
        self.on_close = on_close  # called with True when the client went away
        self.status_code = 200
        self.media_type = "text/event-stream"
        self.background = None
        self.init_headers(HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        pump = asyncio.ensure_future(self._pump(send))
        watch = asyncio.ensure_future(wait_disconnect(receive))
        gone = False
        try:
            await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
            gone = watch.done() and not pump.done()
        finally:
            for task in (pump, watch):
                task.cancel()
            results = await asyncio.gather(pump, watch, return_exceptions=True)
            await self.events.aclose()
            gone = gone or isinstance(results[0], OSError)
            if self.on_close is not None:
                self.on_close(gone)
        if isinstance(results[0], Exception) and not gone:
            raise results[0]

    async def _pump(self, send: Send) -> None:
        async for chunk in self.events:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
