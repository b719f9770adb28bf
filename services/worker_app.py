"""The worker's HTTP API (private; see the contracts): prefill, decode, generate, abort, plus
/health and /metrics. Every route is thin: parse, ask the runtime, shape the answer.

Roles and routes: a prefill worker serves /internal/prefill; a decode worker /internal/decode
and /internal/generate (prompt computed locally, e.g. when no prefill worker is left); a
colocated ("both") worker /internal/generate and /internal/decode.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from kvtransfer import InvalidParams
from services.client_disconnect import NDJSONResponse, next_or_disconnect
from services.engine.errors import EngineError
from services.engine.sequence import FinishReason
from services.engine_loop import RequestStream
from services.http_errors import ApiError, api_error_from, install_error_handlers
from services.internal_api import (
    AbortRequest,
    DecodeRequest,
    GenerateRequest,
    PrefillRequest,
    logprob_json,
)
from services.internal_auth import InternalAuthMiddleware
from services.prefill.kv_leases import LeaseGrantError
from services.sharded_kv_params import ShardedKVParams
from services.worker_runtime import READY, WorkerRuntime

# nginx's "client closed request": nobody reads this answer, but the access log says why.
CLIENT_GONE_STATUS = 499


def create_app(runtime: WorkerRuntime) -> FastAPI:
    """The FastAPI app of one worker; the model loads in the background after startup."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        starting = asyncio.create_task(runtime.start(), name="worker-start")
        try:
            yield
        finally:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            await runtime.stop()

    role = runtime.settings.role
    app = FastAPI(
        title=f"pdserve {role} worker",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.add_middleware(InternalAuthMiddleware, token=runtime.token)
    install_error_handlers(app)

    @app.get("/health")
    async def health() -> JSONResponse:
        body = runtime.health()
        if runtime.state == READY:
            return JSONResponse(body)
        retry = "5" if body["status"] == "loading" else "1"
        return JSONResponse(body, status_code=503, headers={"Retry-After": retry})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/internal/prefill")
    async def prefill(body: PrefillRequest, request: Request) -> Response:
        runtime.require_role(("prefill",), "/internal/prefill")
        loop = runtime.accepting()
        params = body.sampling.to_params()
        rid = body.request_id
        stream = await loop.add(rid, body.prompt_token_ids, params)
        out = await next_or_disconnect(stream, request.receive)
        if out is None:
            runtime.abort_soon(rid)
            return Response(status_code=CLIENT_GONE_STATUS)
        if out.finish_reason is FinishReason.ABORT:
            raise ApiError(409, f"request {rid!r} was aborted", code="aborted")
        kv, finish = None, None
        if out.finish_reason is FinishReason.PREFILL_DONE:
            assert runtime.leases is not None
            try:
                kv = runtime.leases.take(rid)
            except LeaseGrantError as exc:
                raise ApiError(500, str(exc), code="kv_lease") from exc
            if kv is None:
                raise ApiError(409, f"request {rid!r} was aborted", code="aborted")
        elif out.finish_reason is not None:
            finish = out.finish_reason.value
        return JSONResponse(
            {
                "request_id": rid,
                "token_id": out.new_token_ids[0],
                "logprob": logprob_json(out.logprobs[0] if out.logprobs else None),
                "finish_reason": finish,
                "num_prompt_tokens": out.num_prompt_tokens,
                "num_cached_tokens": out.num_cached_tokens,
                "kv_transfer_params": kv,
            }
        )

    @app.post("/internal/decode")
    async def decode(body: DecodeRequest) -> Response:
        runtime.require_role(("decode", "both"), "/internal/decode")
        loop = runtime.accepting()
        params = body.sampling.to_params()
        kv_source = body.kv_transfer_params
        if kv_source is not None:
            try:
                leased = ShardedKVParams.from_dict(kv_source)
            except InvalidParams as exc:
                raise ApiError(400, str(exc), param="kv_transfer_params") from exc
            if leased.num_tokens != len(body.prompt_token_ids):
                raise ApiError(
                    400,
                    f"kv_transfer_params cover {leased.num_tokens} tokens but the prompt has "
                    f"{len(body.prompt_token_ids)}",
                    param="kv_transfer_params",
                )
        stream = await loop.add(
            body.request_id,
            body.prompt_token_ids,
            params,
            kv_source=kv_source,
            output_ids=body.output_token_ids,
        )
        kv_outcome = runtime.kv_outcome if kv_source is not None else None
        return NDJSONResponse(token_lines(runtime, stream, params.logprobs, kv_outcome))

    @app.post("/internal/generate")
    async def generate(body: GenerateRequest) -> Response:
        runtime.require_role(("both", "decode"), "/internal/generate")
        loop = runtime.accepting()
        params = body.sampling.to_params()
        stream = await loop.add(body.request_id, body.prompt_token_ids, params)
        return NDJSONResponse(token_lines(runtime, stream, params.logprobs, None))

    @app.post("/internal/abort")
    async def abort(body: AbortRequest) -> dict[str, bool]:
        return {"aborted": await runtime.abort(body.request_id)}

    return app


async def token_lines(
    runtime: WorkerRuntime,
    stream: RequestStream,
    logprobs: int | None,
    kv_outcome: Callable[[str], str] | None,
) -> AsyncIterator[dict[str, Any]]:
    """The NDJSON lines of a decode or generate stream; aborts the request if cut short.

    The last line has the finish reason ("stop", "length", or "abort" when /internal/abort
    ended it) and where the prompt KV came from; an engine failure ends the stream with an
    OpenAI-shaped ``{"error": ...}`` line instead.
    """
    rid = stream.request_id
    finished = False
    try:
        async for out in stream:
            line: dict[str, Any] = {
                "token_ids": out.new_token_ids,
                "logprobs": None if logprobs is None else [logprob_json(lp) for lp in out.logprobs],
                "finish_reason": None,
            }
            if out.finished:
                finished = True
                line["finish_reason"] = out.finish_reason.value if out.finish_reason else None
                line["kv"] = kv_outcome(rid) if kv_outcome else "recomputed"
            yield line
    except EngineError as exc:
        yield api_error_from(exc).body()
    finally:
        if not finished:  # cut short (client gone, engine error): nothing may stay behind
            runtime.abort_soon(rid)
