"""The router's HTTP face: OpenAI routes, health, metrics; every RouterError becomes its status
here and nowhere else."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.engine.checkpoint import resolve
from services.engine.tokenizer import Tokenizer
from services.registry import Registry
from services.router.admission import Admission
from services.router.api_keys import APIKeys
from services.router.errors import (
    RETRY_AFTER_SECONDS,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    NoWorkerAvailable,
    RouterError,
)
from services.router.orchestrator import Orchestrator
from services.router.output_text import OutputText, Piece, pieces
from services.router.picker import Picker
from services.router.preprocess import PreparedRequest, Preprocessor
from services.router.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    now,
)
from services.router.request_body import parse_body, read_body
from services.router.responses import ChatRenderer, CompletionRenderer, Renderer
from services.router.router_metrics import RequestTimer, RouterMetrics
from services.router.sse import DONE, ClientGone, SSEResponse, event, unless_disconnected
from services.router.worker_client import Timeouts, WorkerClient

log = logging.getLogger("pdserve.router")

CLIENT_CLOSED = 499  # nginx's convention for "the client went away first"; nobody reads it


@dataclass
class RouterConfig:
    """What the operator chose for one router."""

    model: str = "smollm2"
    served_model_name: str | None = None  # default: the --model value
    max_model_len: int | None = None  # default: the model's context length
    max_queued_requests: int = 1024
    max_body_bytes: int = 4 * 2**20
    block_size: int = 16  # the workers' KV block size, to estimate a request's blocks
    timeouts: Timeouts = field(default_factory=Timeouts)

    @property
    def name(self) -> str:
        return self.served_model_name or self.model


class Router:
    """Everything one router process holds: tokenizer, picker, worker client, metrics."""

    def __init__(
        self,
        config: RouterConfig,
        registry: Registry,
        api_keys: APIKeys,
        internal_token: str | None,
        tokenizer: Tokenizer | None = None,
    ):
        self.config = config
        self.registry = registry
        self.api_keys = api_keys
        checkpoint = resolve(config.model)
        model_config = checkpoint.config
        self.tokenizer = tokenizer or Tokenizer.from_checkpoint(checkpoint)
        context = model_config.max_position_embeddings
        self.max_model_len = min(config.max_model_len or context, context)
        self.preprocessor = Preprocessor(
            self.tokenizer, config.name, self.max_model_len, model_config.vocab_size
        )
        self.client = WorkerClient(internal_token, config.timeouts)
        self.orchestrator = Orchestrator(
            registry,
            Picker(config.name, config.block_size),
            self.client,
            set(model_config.eos_token_ids) | set(self.tokenizer.eos_token_ids),
        )
        self.metrics = RouterMetrics()
        self.admission = Admission(config.max_queued_requests)

    async def close(self) -> None:
        await self.orchestrator.drain()
        await self.client.aclose()
        await self.registry.close()

    # ---- the two generation endpoints ----------------------------------------------------

    async def serve(self, request: Request, chat: bool) -> Response:
        """Validate, admit, generate and answer one completion or chat request."""
        try:
            self.api_keys.check(request.headers.get("authorization"))
            raw = await read_body(request, self.config.max_body_bytes)
            release = self.admission.enter()
        except RouterError as e:
            self.metrics.rejected()
            return e.response()
        except ClientGone:
            self.metrics.requests.labels("aborted").inc()
            return Response(status_code=CLIENT_CLOSED)
        streaming = False
        try:
            try:
                body, prepared = await self._prepare(raw, chat)
            except RouterError as e:
                self.metrics.rejected()
                return e.response()
            response = await self._generate(request, chat, body, prepared, release)
            streaming = isinstance(response, SSEResponse)
            return response
        finally:
            if not streaming:
                release()

    async def _prepare(
        self, raw: bytes, chat: bool
    ) -> tuple[CompletionRequest | ChatCompletionRequest, PreparedRequest]:
        # Tokenizing a long prompt takes a while: off the event loop, streams keep flowing.
        if chat:
            chat_body = parse_body(ChatCompletionRequest, raw)
            return chat_body, await asyncio.to_thread(self.preprocessor.chat, chat_body)
        body = parse_body(CompletionRequest, raw)
        return body, await asyncio.to_thread(self.preprocessor.completion, body)

    async def _generate(
        self,
        request: Request,
        chat: bool,
        body: CompletionRequest | ChatCompletionRequest,
        prepared: PreparedRequest,
        release: Callable[[], None],
    ) -> Response:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        renderer_type = ChatRenderer if chat else CompletionRenderer
        renderer = renderer_type(
            self.tokenizer,
            self.config.name,
            len(prepared.prompt_ids),
            prepared.logprobs,
            include_usage,
            prepared.tokens_as_ids,
        )
        timer = RequestTimer(self.metrics, len(prepared.prompt_ids))
        lines = self.orchestrator.generate(renderer.id, prepared)
        stream = pieces(
            lines, OutputText(self.tokenizer, prepared.prompt_ids, prepared.stop), timer
        )
        streaming = False
        try:
            # Nothing is sent before the first token, so a failure up to here still gets its
            # own HTTP status; the first token then leaves at once (that is the TTFT).
            first = await unless_disconnected(request, anext(stream))
            if body.stream:
                streaming = True
                return SSEResponse(
                    self._events(first, stream, renderer, timer, release),
                    on_close=lambda gone: timer.finish("aborted") if gone else None,
                )
            renderer.collect(first)
            if first.finish_reason is None:
                await unless_disconnected(request, self._collect(stream, renderer))
            timer.finish("ok")
            return JSONResponse(renderer.response())
        except ClientGone:
            timer.finish("aborted")
            return Response(status_code=CLIENT_CLOSED)
        except RouterError as e:
            started = timer.first is not None
            overload = isinstance(e, NoWorkerAvailable) or e.status < 500
            timer.finish("rejected" if overload and not started else "error")
            return e.response()
        finally:
            if not streaming:
                await stream.aclose()

    async def _collect(self, stream: AsyncIterator[Piece], renderer: Renderer) -> None:
        async for piece in stream:
            renderer.collect(piece)

    async def _events(
        self,
        first: Piece,
        stream: AsyncGenerator[Piece, None],
        renderer: CompletionRenderer | ChatRenderer,
        timer: RequestTimer,
        release: Callable[[], None],
    ) -> AsyncGenerator[bytes, None]:
        def render(piece: Piece) -> list[dict]:
            if isinstance(renderer, ChatRenderer):
                return renderer.chunks(piece)
            chunk = renderer.chunk(piece)
            return [] if chunk is None else [chunk]

        try:
            piece: Piece | None = first
            while piece is not None:
                for chunk in render(piece):
                    yield event(chunk)
                piece = None if piece.finish_reason is not None else await anext(stream, None)
            usage = renderer.usage_chunk()
            if usage is not None:
                yield event(usage)
            yield DONE
            timer.finish("ok")
        except RouterError as e:
            log.warning("%s failed after streaming began: %s", renderer.id, e.message)
            timer.finish("error")
            yield event(e.body())
            yield DONE
        finally:
            await stream.aclose()
            release()

    # ---- the rest of the API ---------------------------------------------------------------

    def models(self, request: Request) -> Response:
        try:
            self.api_keys.check(request.headers.get("authorization"))
        except RouterError as e:
            return e.response()
        card = ModelCard(id=self.config.name, created=now(), max_model_len=self.max_model_len)
        return JSONResponse(ModelList(data=[card]).model_dump())

    async def health(self) -> Response:
        try:
            pools = await self.orchestrator.pools()
        except RouterError as e:
            return JSONResponse(
                {"status": "unavailable", "reason": e.message},
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        workers = {"prefill": pools.prefill, "decode": pools.decode, "both": pools.both}
        if not pools.ready:
            return JSONResponse(
                {"status": "unavailable", "reason": pools.missing(), "workers": workers},
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        return JSONResponse({"status": "ok", "model": self.config.name, "workers": workers})


def create_app(router: Router) -> FastAPI:
    """The FastAPI app serving `router`; closing the app closes the router."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await router.close()

    app = FastAPI(title="pdserve router", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.router = router

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await router.serve(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await router.serve(request, chat=True)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        return router.models(request)

    @app.get("/health")
    async def health() -> Response:
        return await router.health()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(router.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return NotFound(
                f"no endpoint {request.url.path}; this server offers /v1/completions, "
                "/v1/chat/completions, /v1/models, /health and /metrics"
            ).response()
        if exc.status_code == 405:
            return MethodNotAllowed(
                f"{request.method} is not allowed on {request.url.path}"
            ).response()
        return InvalidRequest(str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unexpected error", exc_info=exc)
        return RouterError(f"internal error: {type(exc).__name__}: {exc}").response()

    return app
