"""Streaming client for OpenAI-compatible servers: sends one request, times every content chunk.

Errors of any kind (HTTP status, connection, timeout, malformed stream) end up in the returned
record, never as an exception, so one failing request cannot stop a benchmark.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import httpx

from loadgen.connections import DIVERTED, SINK, StreamingTransport
from loadgen.metrics import RequestRecord
from loadgen.workload import Request

PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


class EndpointError(ValueError):
    """The server URL or endpoint kind is unusable."""


def base_url(url: str) -> str:
    """`url` without a trailing slash or `/v1`, so `http://h:8000/v1` and `http://h:8000` agree."""
    if not url.startswith(("http://", "https://")):
        raise EndpointError(f"URL must start with http:// or https:// (got {url!r})")
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


@dataclass(frozen=True)
class Endpoint:
    """Where and how requests are sent. `ignore_eos` and `include_usage` are extensions that
    vLLM, SGLang and Dynamo accept; turn them off for servers that reject them."""

    base_url: str
    model: str
    kind: str = "completions"
    api_key: str | None = None
    ignore_eos: bool = True
    include_usage: bool = True
    extra_body: dict[str, Any] = field(default_factory=dict)
    timeout: float = 300.0  # seconds for a whole request, first byte to last

    def __post_init__(self) -> None:
        if self.kind not in PATHS:
            raise EndpointError(f"unknown endpoint {self.kind!r} (one of {tuple(PATHS)})")

    @property
    def path(self) -> str:
        """The request path, e.g. `/v1/chat/completions`."""
        return PATHS[self.kind]

    def body(self, request: Request) -> dict[str, Any]:
        """The JSON body that asks for `request` as a stream."""
        body: dict[str, Any] = {"model": self.model, "max_tokens": request.output_len}
        if self.kind == "chat":
            body["messages"] = [{"role": "user", "content": request.prompt}]
        else:
            body["prompt"] = request.prompt
        body["stream"] = True
        if self.include_usage:
            body["stream_options"] = {"include_usage": True}
        if self.ignore_eos:
            body["ignore_eos"] = True
        body.update(self.extra_body)
        return body


def error_message(body: bytes) -> str:
    """The message of an OpenAI-style error body (or FastAPI's `detail`, or the raw text)."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:300] or "(empty body)"
    if isinstance(data, dict):
        inner = data.get("error", data)
        if isinstance(inner, dict):
            data = inner.get("message") or inner.get("detail") or inner
        else:
            data = inner
    return str(data)[:300]


def _content_of_completion(choice: dict[str, Any]) -> Any:
    return choice.get("text")


def _content_of_chat(choice: dict[str, Any]) -> Any:
    delta = choice.get("delta") or {}
    # Reasoning models stream their thinking first; it is generated output all the same.
    return delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning")


class StreamClient:
    """Sends requests over one shared connection pool sized for thousands of open streams."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        # Uncompressed: an event stream gains nothing from it and decoding costs every token.
        headers = {"Accept-Encoding": "identity"}
        if endpoint.api_key:
            headers["Authorization"] = f"Bearer {endpoint.api_key}"
        # No pool limits and no httpx timeouts: concurrency is the caller's decision and the
        # request-wide deadline below is the only timeout that matches what a user means.
        self._http = httpx.AsyncClient(
            base_url=endpoint.base_url,
            headers=headers,
            transport=StreamingTransport(),
            timeout=httpx.Timeout(None),
        )
        self._content = _content_of_chat if endpoint.kind == "chat" else _content_of_completion

    async def __aenter__(self) -> StreamClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection."""
        await self._http.aclose()

    async def send(self, request: Request, t0: float = 0.0) -> RequestRecord:
        """Stream `request` and measure it; `t0` is the `perf_counter` value send times count
        from."""
        record = RequestRecord(
            send_time=0.0,
            prompt_len=request.prompt_len,
            output_len=0,
            requested_output_len=request.output_len,
        )
        body = self.endpoint.body(request)
        start = perf_counter()
        record.send_time = start - t0
        try:
            stream = _Stream(self._content)
            async with (
                asyncio.timeout(self.endpoint.timeout),
                self._http.stream(
                    "POST", self.endpoint.path, json=body, extensions={SINK: stream.receive}
                ) as response,
            ):
                if response.status_code != 200:
                    message = error_message(await response.aread())
                    record.error = f"HTTP {response.status_code}: {message}"
                    return record
                await self._read(response, stream, start, record)
        except TimeoutError:
            record.error = f"timed out after {self.endpoint.timeout:g} s"
        except httpx.HTTPError as exc:
            record.error = f"{type(exc).__name__}: {exc}".rstrip(": ")
        return record

    async def _read(
        self, response: httpx.Response, stream: _Stream, start: float, record: RequestRecord
    ) -> None:
        """Consume the SSE stream to its end, filling `record`."""
        if response.extensions.get(DIVERTED):
            # Events were parsed as they arrived: this only waits for the end.
            async for _ in response.aiter_raw():
                pass
        else:
            async for data in response.aiter_bytes():
                stream.receive(data, perf_counter())
        stream.close()
        if stream.error:
            record.error = stream.error
            return
        times = stream.times
        if not times:
            record.error = "stream ended without any generated text"
            return
        record.ttft = times[0] - start
        record.latency = times[-1] - start
        record.itl = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
        record.output_len = len(times)
        if stream.usage:
            record.output_len = stream.usage.get("completion_tokens") or record.output_len
            record.prompt_len = stream.usage.get("prompt_tokens") or record.prompt_len
        record.success = True


class _Stream:
    """What the server-sent events of one response said so far."""

    def __init__(self, content: Callable[[dict[str, Any]], Any]) -> None:
        self.content = content
        self.times: list[float] = []  # arrival of each event that carried generated text
        self.usage: dict[str, Any] | None = None
        self.error = ""  # set by an error event or malformed data; later data is ignored
        self._pending = b""  # a line not yet complete
        self._now = 0.0

    def receive(self, data: bytes, now: float) -> None:
        """Take body bytes that arrived at `now` (events arriving together share the time)."""
        if self.error:
            return
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        self._now = now
        for line in lines:
            # Blank lines end events; event:, id: and comments carry nothing needed here.
            if line.startswith(b"data:"):
                self._event(line[5:], now)
                if self.error:
                    return

    def close(self) -> None:
        """The body ended: a last line without its newline still counts."""
        if self._pending.startswith(b"data:") and not self.error:
            self._event(self._pending[5:], self._now)

    def _event(self, data: bytes, now: float) -> None:
        payload = data.strip()
        # Read on past [DONE] to the end of the body so the connection can be reused.
        if payload == b"[DONE]":
            return
        try:
            event = json.loads(payload.decode())
        except ValueError:
            event = None
        if not isinstance(event, dict):
            self.error = f"malformed stream from server: {payload[:80]!r} is not a JSON object"
            return
        if "error" in event or event.get("object") == "error":
            self.error = "error in stream: " + error_message(payload)
            return
        choices = event.get("choices")
        first = choices[0] if choices and isinstance(choices, list) else None
        if isinstance(first, dict) and self.content(first):
            self.times.append(now)
        usage = event.get("usage")
        if usage and isinstance(usage, dict):
            self.usage = usage
