"""The router's side of the private worker HTTP API: prefill, decode and generate streams, abort.

Every call carries the internal token and a timeout; a failure comes back as a typed
`WorkerCallError` whose class says whether another worker may be tried.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

log = logging.getLogger("pdserve.router")

FINISH_REASONS = ("stop", "length")


@dataclass
class Sampling:
    """The internal sampling object; `max_tokens` is the whole output budget of the request."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TokenLogprob:
    """A generated token's log-probability and the top alternatives as (token id, logprob)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class PrefillResult:
    token_id: int
    logprob: TokenLogprob | None
    finish_reason: str | None
    num_prompt_tokens: int
    num_cached_tokens: int
    kv_transfer_params: dict[str, Any] | None


@dataclass
class StreamLine:
    """One NDJSON line of a decode or generate stream: the tokens of one engine step."""

    token_ids: list[int]
    logprobs: list[TokenLogprob | None] | None
    finish_reason: str | None
    kv: str | None = None


class WorkerCallError(Exception):
    """A call to a worker failed; the subclass says whether another worker could do better."""

    def __init__(self, url: str, message: str):
        super().__init__(f"worker {url}: {message}")
        self.url = url
        self.message = message


class WorkerUnreachable(WorkerCallError):
    """Connection refused or reset, timeout, or a stream cut short: the worker may be gone."""


class WorkerBusy(WorkerCallError):
    """The worker answered 429 or 503: it is overloaded, loading or draining."""


class WorkerRejected(WorkerCallError):
    """The worker refused the request itself (4xx): another worker would refuse it too."""

    def __init__(self, url: str, message: str, status: int):
        super().__init__(url, message)
        self.status = status


class WorkerBroken(WorkerCallError):
    """The worker answered 5xx or something that does not follow the internal API."""


class WorkerAuthFailed(WorkerCallError):
    """The worker refused the internal token: a deployment error every worker would repeat."""


# An idle pooled connection is dropped here well before the worker closes it (its keep-alive
# timeout, services.worker.KEEP_ALIVE_SECONDS). With the two equal (httpx's and uvicorn's
# default, 5 s), a request could go out on a connection the worker was closing at that moment
# and fail with an empty read: a lost decode stream under light load.
KEEPALIVE_EXPIRY_SECONDS = 15.0


@dataclass(frozen=True)
class Timeouts:
    """Seconds: to connect, to wait for a prefill answer, and between two lines of a stream."""

    connect: float = 5.0
    prefill: float = 300.0
    stream_idle: float = 300.0
    abort: float = 5.0


class WorkerClient:
    """One pooled HTTP client for every worker this router talks to."""

    def __init__(self, internal_token: str | None, timeouts: Timeouts | None = None):
        self.timeouts = timeouts or Timeouts()
        headers = {"Authorization": f"Bearer {internal_token}"} if internal_token else {}
        # Each streaming request holds a connection for its whole life; the router's own
        # admission limit bounds how many there are, so the pool must not add a second limit.
        self.http = httpx.AsyncClient(
            headers=headers,
            limits=httpx.Limits(
                max_connections=None,
                max_keepalive_connections=128,
                keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS,
            ),
            timeout=httpx.Timeout(self.timeouts.prefill, connect=self.timeouts.connect),
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def prefill(
        self, url: str, request_id: str, prompt_ids: list[int], sampling: Sampling
    ) -> PrefillResult:
        """POST /internal/prefill: the first token and where its KV waits to be pulled."""
        body = {
            "request_id": request_id,
            "prompt_token_ids": prompt_ids,
            "sampling": sampling.to_json(),
        }
        try:
            response = await self.http.post(f"{url}/internal/prefill", json=body)
        except httpx.TimeoutException as e:
            raise WorkerUnreachable(url, f"prefill timed out ({type(e).__name__})") from e
        except httpx.TransportError as e:
            raise WorkerUnreachable(url, f"prefill failed: {e!r}") from e
        if response.status_code != 200:
            raise _status_error(url, response.status_code, response.content)
        try:
            data = response.json()
            return PrefillResult(
                token_id=_int(data["token_id"]),
                logprob=_logprob(data.get("logprob")),
                finish_reason=_finish(data.get("finish_reason")),
                num_prompt_tokens=_int(data.get("num_prompt_tokens", len(prompt_ids))),
                num_cached_tokens=_int(data.get("num_cached_tokens", 0)),
                kv_transfer_params=data.get("kv_transfer_params"),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise WorkerBroken(url, f"malformed prefill answer: {e}") from e

    def decode(
        self,
        url: str,
        request_id: str,
        prompt_ids: list[int],
        output_ids: list[int],
        sampling: Sampling,
        kv_transfer_params: dict[str, Any] | None,
    ) -> AsyncIterator[StreamLine]:
        """POST /internal/decode: the tokens after `output_ids`, one line per engine step."""
        body = {
            "request_id": request_id,
            "prompt_token_ids": prompt_ids,
            "output_token_ids": output_ids,
            "sampling": sampling.to_json(),
            "kv_transfer_params": kv_transfer_params,
        }
        return self._stream(url, "/internal/decode", body)

    def generate(
        self, url: str, request_id: str, prompt_ids: list[int], sampling: Sampling
    ) -> AsyncIterator[StreamLine]:
        """POST /internal/generate on a both-role worker: every token, the first included."""
        body = {
            "request_id": request_id,
            "prompt_token_ids": prompt_ids,
            "sampling": sampling.to_json(),
        }
        return self._stream(url, "/internal/generate", body)

    async def _stream(self, url: str, path: str, body: dict[str, Any]) -> AsyncIterator[StreamLine]:
        timeout = httpx.Timeout(self.timeouts.stream_idle, connect=self.timeouts.connect)
        finished = False
        try:
            async with self.http.stream("POST", url + path, json=body, timeout=timeout) as response:
                if response.status_code != 200:
                    raise _status_error(url, response.status_code, await response.aread())
                async for raw in response.aiter_lines():
                    if not raw.strip():
                        continue
                    line = _stream_line(url, raw)
                    finished = line.finish_reason is not None
                    yield line
                    if finished:
                        return
        except httpx.TimeoutException as e:
            raise WorkerUnreachable(url, f"{path} stream stalled ({type(e).__name__})") from e
        except httpx.TransportError as e:
            raise WorkerUnreachable(url, f"{path} stream broke: {e!r}") from e
        if not finished:
            raise WorkerUnreachable(url, f"{path} stream ended before the request finished")

    async def abort(self, url: str, request_id: str) -> bool:
        """POST /internal/abort; True if the worker still had the request. Failures are logged:
        a dead worker has nothing left to free."""
        try:
            response = await self.http.post(
                f"{url}/internal/abort",
                json={"request_id": request_id},
                timeout=self.timeouts.abort,
            )
        except httpx.HTTPError as e:
            log.info("abort of %s on %s failed: %r", request_id, url, e)
            return False
        if response.status_code != 200:
            log.warning("abort of %s on %s answered %s", request_id, url, response.status_code)
            return False
        return bool(response.json().get("aborted", False))


def _status_error(url: str, status: int, content: bytes) -> WorkerCallError:
    message = _error_message(content)
    if status in (429, 503):
        return WorkerBusy(url, f"busy ({status}): {message}")
    if status == 401:
        return WorkerAuthFailed(
            url,
            "rejected the internal token; give the router and every worker the same "
            "PDSERVE_INTERNAL_TOKEN",
        )
    if status == 409:
        # The worker aborted the request itself (shutting down, engine restart): not the
        # request's fault, so another worker may serve it.
        return WorkerBroken(url, f"aborted the request: {message}")
    if 400 <= status < 500:
        return WorkerRejected(url, message, status)
    return WorkerBroken(url, f"answered {status}: {message}")


def _error_message(content: bytes) -> str:
    text = content.decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except ValueError:
        return text[:300] or "(empty body)"
    if isinstance(data, dict):
        inner = data.get("error", data)
        if isinstance(inner, dict):
            return str(inner.get("message") or inner.get("detail") or inner)[:300]
        return str(inner)[:300]
    return str(data)[:300]


def _stream_line(url: str, raw: str) -> StreamLine:
    try:
        data = json.loads(raw)
        lps = data.get("logprobs")
        return StreamLine(
            token_ids=[_int(t) for t in data["token_ids"]],
            logprobs=None if lps is None else [_logprob(lp) for lp in lps],
            finish_reason=_finish(data.get("finish_reason")),
            kv=data.get("kv"),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise WorkerBroken(url, f"malformed stream line {raw[:200]!r}: {e}") from e


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _finish(value: Any) -> str | None:
    if value is not None and value not in FINISH_REASONS:
        raise ValueError(f"unknown finish_reason {value!r}")
    return value


def _logprob(value: Any) -> TokenLogprob | None:
    if value is None:
        return None
    return TokenLogprob(
        token_id=_int(value["token_id"]),
        logprob=float(value["logprob"]),
        top=[(_int(t), float(lp)) for t, lp in value.get("top") or []],
    )
