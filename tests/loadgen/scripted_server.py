"""A real OpenAI-compatible streaming server whose timings follow a script, for loadgen tests.

The requested model picks the script: `steady`, or `steady/anything` (the suffix gets its own
request counters, so tests do not see each other's traffic). Run as a program it binds a free
port on 127.0.0.1, prints the port on stdout and serves until terminated.
"""

from __future__ import annotations

import asyncio
import json
import socket
import zlib
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn


@dataclass(frozen=True)
class Script:
    """How one model answers. Times in seconds from the moment the request arrives."""

    ttft: float = 0.05  # first token
    itl: float = 0.02  # gap between chunks
    usage: bool = True  # report usage when stream_options asks for it
    tokens_per_chunk: int = 1
    done_delay: float = 0.0  # pause between the last token and [DONE]
    status: int = 200  # answer every request with this error status instead
    error_after: int | None = None  # send an in-stream error after this many tokens
    rejects: tuple[str, ...] = ()  # body fields answered with a 400 that names them
    busy_limit: int | None = None  # with more requests than this in flight...
    busy_ttft: float = 0.0  # ...the first token comes this late (the last one on time)
    cycle: tuple[tuple[float, float], ...] = ()  # (ttft, itl) by arrival index, cycled
    gzip: bool = False  # compress the stream even though the client asked for identity
    garbage: bool = False  # send a data line that is not JSON after the first token


SCRIPTS: dict[str, Script] = {
    "steady": Script(ttft=0.08, itl=0.025),
    "no-usage": Script(ttft=0.06, itl=0.02, usage=False),
    "two-per-chunk": Script(ttft=0.04, itl=0.02, tokens_per_chunk=2),
    "late-done": Script(ttft=0.06, itl=0.02, done_delay=0.25),
    "overloaded": Script(status=429),
    "broken-stream": Script(error_after=3),
    "strict": Script(rejects=("ignore_eos",)),
    "stall": Script(ttft=30.0),
    "gzipped": Script(gzip=True),
    "garbage": Script(garbage=True),
    # A request of 10 tokens lasts 0.05 + 9 * 0.05 = 0.5 s; with more than 6 in flight its
    # first token takes 0.3 s (and the rest come faster, so it still ends at 0.5 s and load
    # does not feed on itself). At a constant rate r, 0.5 * r requests are in flight, so
    # requests keep a 0.05 s TTFT exactly while r < 6 / 0.5 = 12 req/s.
    "busy": Script(ttft=0.05, itl=0.05, busy_limit=6, busy_ttft=0.3),
    # Of every four requests: on time, late first token, slow tokens, on time. Late and slow
    # are far off, so no delay of a busy machine can make them look on time.
    "mixed": Script(cycle=((0.05, 0.02), (0.6, 0.02), (0.05, 0.15), (0.05, 0.02))),
}


@dataclass
class Counters:
    """What one model name has seen."""

    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    last_body: dict[str, Any] | None = None
    prompts: set[str] = field(default_factory=set)  # distinct prompts, as a prefix cache sees


COUNTERS: dict[str, Counters] = defaultdict(Counters)
Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


async def _json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def _error(send: Send, status: int, message: str, kind: str) -> None:
    error = {"message": message, "type": kind, "param": None, "code": status}
    await _json(send, status, {"error": error})


def _sse(obj: dict[str, Any] | str) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj)
    return f"data: {data}\n\n".encode()


def _chunk(chat: bool, text: str, finish: str | None = None) -> dict[str, Any]:
    if chat:
        choice = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
        return {"object": "chat.completion.chunk", "choices": [choice]}
    choice = {"index": 0, "text": text, "finish_reason": finish}
    return {"object": "text_completion", "choices": [choice]}


def _prompt_tokens(body: dict[str, Any], chat: bool) -> int:
    if chat:
        return sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    prompt = body.get("prompt", "")
    return len(prompt) if isinstance(prompt, list) else len(str(prompt).split())


async def _stream(send: Send, body: dict[str, Any], chat: bool, arrived: float) -> None:
    """Answer a completion request by its model's script."""
    model = str(body.get("model", ""))
    script = SCRIPTS.get(model.split("/")[0])
    if script is None:
        await _error(send, 404, f"The model `{model}` does not exist.", "NotFoundError")
        return
    for name in script.rejects:
        if name in body:
            message = f"Unrecognized request argument supplied: {name}"
            await _error(send, 400, message, "invalid_request_error")
            return
    if script.status != 200:
        await _error(send, script.status, "The server is overloaded, retry later.", "overloaded")
        return
    if not body.get("stream"):
        await _error(send, 400, "this test server only streams", "invalid_request_error")
        return
    counters = COUNTERS[model]
    counters.last_body = body
    counters.prompts.add(json.dumps(body.get("prompt", body.get("messages"))))
    index = counters.requests
    counters.requests += 1
    counters.in_flight += 1
    counters.max_in_flight = max(counters.max_in_flight, counters.in_flight)
    ttft, itl = script.ttft, script.itl
    if script.cycle:
        ttft, itl = script.cycle[index % len(script.cycle)]
    tokens = int(body["max_tokens"])
    if script.busy_limit is not None and counters.in_flight > script.busy_limit:
        end = ttft + (tokens - 1) * itl
        ttft = script.busy_ttft
        itl = max(0.0, end - ttft) / max(1, tokens - 1)
    usage = script.usage and (body.get("stream_options") or {}).get("include_usage")
    loop = asyncio.get_running_loop()

    compressor = zlib.compressobj(wbits=31) if script.gzip else None  # 31: gzip framing

    async def event(payload: dict[str, Any] | str) -> None:
        data = _sse(payload)
        if compressor is not None:
            data = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        await send({"type": "http.response.body", "body": data, "more_body": True})

    try:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        if compressor is not None:
            headers.append((b"Content-Encoding", b"gzip"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if chat:  # like vLLM: the role comes first, in a chunk without text
            delta = {"role": "assistant", "content": ""}
            await event({"object": "chat.completion.chunk",
                         "choices": [{"index": 0, "delta": delta}]})
        sent = 0
        chunk = 0
        while sent < tokens:
            # Deadlines from the arrival, not sleeps from the last chunk: no drift.
            await asyncio.sleep(max(0.0, arrived + ttft + chunk * itl - loop.time()))
            if script.error_after is not None and sent >= script.error_after:
                await event({"error": {"message": "engine died", "type": "InternalError",
                                       "code": 500}})
                break
            n = min(script.tokens_per_chunk, tokens - sent)
            await event(_chunk(chat, " tok" * n))
            if script.garbage:
                await event("this is not json")
            sent += n
            chunk += 1
        else:
            await event(_chunk(chat, "", finish="length"))
            if usage:
                prompt_tokens = _prompt_tokens(body, chat)
                await event({"choices": [], "usage": {
                    "prompt_tokens": prompt_tokens, "completion_tokens": sent,
                    "total_tokens": prompt_tokens + sent}})
            if script.done_delay:
                await asyncio.sleep(script.done_delay)
            await event("[DONE]")
        tail = compressor.flush() if compressor is not None else b""
        await send({"type": "http.response.body", "body": tail})
    finally:
        counters.in_flight -= 1


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """A bare ASGI app: no framework between the request and the script's clock."""
    if scope["type"] != "http":
        return
    arrived = asyncio.get_running_loop().time()
    method, path = scope["method"], scope["path"]
    if method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        await _stream(send, json.loads(raw), path.endswith("/chat/completions"), arrived)
    elif method == "GET" and path == "/v1/models":
        models = [{"id": name, "object": "model"} for name in SCRIPTS]
        await _json(send, 200, {"object": "list", "data": models})
    elif method == "GET" and path == "/health":
        await _json(send, 200, {"status": "ok"})
    elif method == "GET" and path.startswith("/stats/"):
        counters = COUNTERS[path[len("/stats/"):]]
        await _json(send, 200, {"requests": counters.requests,
                                "max_in_flight": counters.max_in_flight,
                                "distinct_prompts": len(counters.prompts),
                                "last_body": counters.last_body})
    else:
        await _error(send, 404, f"no route {method} {path}", "NotFound")


def main() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    print(sock.getsockname()[1], flush=True)
    # Streams still open at shutdown (a stalled one runs for 30 s) need not be waited for.
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=1)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
