"""Noticing that the caller went away, so its request stops and its KV blocks are freed.

Both helpers listen for ``http.disconnect`` themselves rather than relying on the server's
ASGI version: a stream that is waiting (for a KV pull, for a batch slot) sees a vanished
client at once, not only at its next write.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from services.engine.engine import RequestOutput
from services.engine_loop import RequestStream


async def wait_for_disconnect(receive: Receive) -> None:
    """Return when the client closes the connection (the request body is already read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def next_or_disconnect(stream: RequestStream, receive: Receive) -> RequestOutput | None:
    """The stream's next output, or None if the client left first."""
    nxt = asyncio.ensure_future(anext(stream))
    gone = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        await asyncio.wait({nxt, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not nxt.done():
            nxt.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gone
    if nxt.done() and not nxt.cancelled():
        return nxt.result()
    return None


async def _ndjson(objects: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    async for obj in objects:
        yield json.dumps(obj, separators=(",", ":")).encode() + b"\n"


class NDJSONResponse(StreamingResponse):
    """One JSON object per line; the producer is cancelled as soon as the client leaves.

    Cancellation reaches the producing generator as CancelledError, so its ``finally``
    can abort the request.
    """

    media_type = "application/x-ndjson"

    def __init__(self, objects: AsyncIterator[dict[str, Any]]):
        super().__init__(_ndjson(objects))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = asyncio.ensure_future(self.stream_response(send))
        gone = asyncio.ensure_future(wait_for_disconnect(receive))
        try:
            await asyncio.wait({stream, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stream, gone):
                task.cancel()
            results = await asyncio.gather(stream, gone, return_exceptions=True)
        error = results[0]
        # A client that left mid-write surfaces as OSError: that is the disconnect, not a bug.
        if isinstance(error, Exception) and not isinstance(error, OSError):
            raise error
