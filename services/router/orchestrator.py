"""One request's journey through the workers, and what happens when a worker fails.

Disaggregated: prefill (retried on another prefill worker while nothing has been streamed) ->
first token out at once -> decode stream (continued on another decode worker from prompt +
tokens so far if one dies). Colocated: one generate stream on a both-role worker, continued the
same way. Leaving early (client gone, stop string) aborts the request on every worker holding it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, replace

from services.registry import Registry, RegistryError, WorkerRecord
from services.router.errors import (
    RETRY_AFTER_SECONDS,
    InvalidRequest,
    NoWorkerAvailable,
    WorkerFailed,
)
from services.router.picker import Picker
from services.router.preprocess import PreparedRequest
from services.router.worker_client import (
    PrefillResult,
    StreamLine,
    WorkerAuthFailed,
    WorkerBusy,
    WorkerCallError,
    WorkerClient,
    WorkerRejected,
    WorkerUnreachable,
)

log = logging.getLogger("pdserve.router")

BUSY_BACKOFF_SECONDS = 0.05  # first wait before asking busy workers again (doubles up to 1 s)


@dataclass(frozen=True)
class Pools:
    """How many live workers of each role serve this router's model."""

    prefill: int
    decode: int
    both: int

    @property
    def disaggregated(self) -> bool:
        return self.prefill > 0 and self.decode > 0

    @property
    def ready(self) -> bool:
        return self.disaggregated or self.both > 0

    def missing(self) -> str:
        """Why requests cannot be served now, in words."""
        lacking = [role for role in ("prefill", "decode") if getattr(self, role) == 0]
        return (
            f"no live {' or '.join(lacking)} worker (and no both-role worker) is registered "
            f"for this model"
        )


class Orchestrator:
    """Runs requests on workers picked from the registry."""

    def __init__(
        self,
        registry: Registry,
        picker: Picker,
        client: WorkerClient,
        eos_token_ids: set[int],
        busy_patience: float = 60.0,
    ):
        self.busy_patience = busy_patience  # seconds a started request waits for a busy worker
        self.registry = registry
        self.picker = picker
        self.client = client
        self.eos_token_ids = eos_token_ids
        self._background: set[asyncio.Task] = set()

    async def pools(self) -> Pools:
        """Count the live workers of each role for this model (NoWorkerAvailable if the
        registry cannot be read)."""
        workers = await self._workers()
        count = {role: 0 for role in ("prefill", "decode", "both")}
        for w in workers:
            if w.role in count:
                count[w.role] += 1
        return Pools(**count)

    async def _workers(self) -> list[WorkerRecord]:
        try:
            workers = await self.registry.list_workers()
        except RegistryError as e:
            raise NoWorkerAvailable(str(e), retry_after=RETRY_AFTER_SECONDS) from e
        return [w for w in workers if w.model == self.picker.model]

    async def generate(
        self, request_id: str, req: PreparedRequest
    ) -> AsyncGenerator[StreamLine, None]:
        """Every output token of the request, in worker-step lines; the last one is finished."""
        pools = await self.pools()
        if pools.disaggregated:
            stream = self._disaggregated(request_id, req)
        elif pools.both:
            stream = self._colocated(request_id, req)
        else:
            raise NoWorkerAvailable(pools.missing(), retry_after=RETRY_AFTER_SECONDS)
        try:
            async for line in stream:
                yield line
        finally:
            await stream.aclose()

    # ---- disaggregated -----------------------------------------------------------------

    async def _disaggregated(
        self, request_id: str, req: PreparedRequest
    ) -> AsyncGenerator[StreamLine, None]:
        holds: dict[str, str] = {}  # worker url -> request id it may still hold blocks for
        done = False
        try:
            prefill_worker, first = await self._prefill(request_id, req, holds)
            yield StreamLine(
                [first.token_id],
                None if first.logprob is None else [first.logprob],
                first.finish_reason,
            )
            if first.finish_reason is not None:
                holds.clear()
                done = True
                return
            output = [first.token_id]
            kv = first.kv_transfer_params
            if kv is not None:
                holds[prefill_worker.url] = request_id
            tried: set[str] = set()
            busy: set[str] = set()
            last_error: WorkerCallError | None = None
            attempt = 0
            while True:
                worker = await self._pick_patiently(
                    "decode",
                    tried,
                    busy,
                    req,
                    output,
                    last_error,
                    kv_backend=prefill_worker.kv_backend if kv is not None else None,
                )
                decode_id = request_id if attempt == 0 else f"{request_id}-{attempt}"
                holds[worker.url] = decode_id
                lines = self.client.decode(
                    worker.url, decode_id, req.prompt_ids, output, req.sampling, kv
                )
                try:
                    async with aclosing(lines):
                        async for line in lines:
                            # Decode streams only once it has the KV: prefill's hold is gone.
                            holds.pop(prefill_worker.url, None)
                            output.extend(line.token_ids)
                            yield line
                            if line.finish_reason is not None:
                                holds.clear()
                                done = True
                                return
                except WorkerCallError as e:
                    (busy if isinstance(e, WorkerBusy) else tried).add(worker.worker_id)
                    self._failed(worker, e)
                    last_error = e
                    if isinstance(e, WorkerUnreachable) and kv is not None:
                        # The pull may have been under way; recompute instead of guessing.
                        kv = None
                        self._abort_later(holds, prefill_worker.url)
                    self._abort_later(holds, worker.url)
                    reason = self._already_finished(output, req)
                    if reason is not None:
                        yield StreamLine([], None, reason)
                        done = True
                        return
                    log.warning("%s: decode failed, continuing elsewhere: %s", request_id, e)
                    attempt += 1
        finally:
            if not done:
                for url in list(holds):
                    self._abort_later(holds, url)

    async def _prefill(
        self, request_id: str, req: PreparedRequest, holds: dict[str, str]
    ) -> tuple[WorkerRecord, PrefillResult]:
        tried: set[str] = set()
        last_error: WorkerCallError | None = None
        while True:
            worker = await self._pick("prefill", tried, len(req.prompt_ids), [], last_error)
            tried.add(worker.worker_id)
            holds[worker.url] = request_id
            try:
                result = await self.client.prefill(
                    worker.url, request_id, req.prompt_ids, req.sampling
                )
            except WorkerCallError as e:
                self._failed(worker, e)
                last_error = e
                if isinstance(e, WorkerUnreachable):
                    self._abort_later(holds, worker.url)  # it may still be computing
                else:
                    holds.pop(worker.url, None)
                log.warning("%s: prefill failed, trying another worker: %s", request_id, e)
                continue
            holds.pop(worker.url, None)
            return worker, result

    # ---- colocated ---------------------------------------------------------------------

    async def _colocated(
        self, request_id: str, req: PreparedRequest
    ) -> AsyncGenerator[StreamLine, None]:
        holds: dict[str, str] = {}
        done = False
        output: list[int] = []
        tried: set[str] = set()
        busy: set[str] = set()
        last_error: WorkerCallError | None = None
        attempt = 0
        try:
            while True:
                if output:
                    worker = await self._pick_patiently(
                        "both", tried, busy, req, output, last_error
                    )
                else:
                    worker = await self._pick(
                        "both", tried | busy, len(req.prompt_ids), output, last_error
                    )
                run_id = request_id if attempt == 0 else f"{request_id}-{attempt}"
                holds[worker.url] = run_id
                # A continuation treats the tokens so far as prompt: same context, same
                # greedy output, and the remaining budget only.
                sampling = replace(req.sampling, max_tokens=req.sampling.max_tokens - len(output))
                lines = self.client.generate(worker.url, run_id, req.prompt_ids + output, sampling)
                try:
                    async with aclosing(lines):
                        async for line in lines:
                            output.extend(line.token_ids)
                            yield line
                            if line.finish_reason is not None:
                                holds.clear()
                                done = True
                                return
                except WorkerCallError as e:
                    (busy if isinstance(e, WorkerBusy) else tried).add(worker.worker_id)
                    self._failed(worker, e)
                    last_error = e
                    self._abort_later(holds, worker.url)
                    reason = self._already_finished(output, req)
                    if reason is not None:
                        yield StreamLine([], None, reason)
                        done = True
                        return
                    log.warning("%s: generate failed, continuing elsewhere: %s", request_id, e)
                    attempt += 1
        finally:
            if not done:
                for url in list(holds):
                    self._abort_later(holds, url)

    # ---- shared ------------------------------------------------------------------------

    async def _pick(
        self,
        role: str,
        tried: set[str],
        num_prompt_tokens: int,
        output: list[int],
        last_error: WorkerCallError | None = None,
        kv_backend: str | None = None,
    ) -> WorkerRecord:
        worker = self.picker.pick(await self._workers(), role, exclude=tried, kv_backend=kv_backend)
        if worker is None:
            what = "could take" if not tried else "is left to take"
            message = f"no live {role} worker {what} the request"
            if output:
                message += f" after {len(output)} tokens"
            if last_error is not None:
                message += f"; last failure: {last_error}"
            raise NoWorkerAvailable(message, retry_after=RETRY_AFTER_SECONDS)
        self.picker.sent(worker, num_prompt_tokens + len(output))
        return worker

    async def _pick_patiently(
        self,
        role: str,
        tried: set[str],
        busy: set[str],
        req: PreparedRequest,
        output: list[int],
        last_error: WorkerCallError | None,
        kv_backend: str | None = None,
    ) -> WorkerRecord:
        """Like `_pick`, but once tokens have been streamed, wait out workers that are only
        busy (429/503) rather than fail a request the client already sees running."""
        deadline = time.monotonic() + self.busy_patience
        delay = BUSY_BACKOFF_SECONDS
        while True:
            try:
                return await self._pick(
                    role, tried | busy, len(req.prompt_ids), output, last_error, kv_backend
                )
            except NoWorkerAvailable:
                if not busy or time.monotonic() + delay > deadline:
                    raise
            await asyncio.sleep(delay)  # back off before asking busy workers again
            delay = min(delay * 2, 1.0)
            busy.clear()

    def _failed(self, worker: WorkerRecord, error: WorkerCallError) -> None:
        if isinstance(error, WorkerRejected):
            raise InvalidRequest(error.message) from error
        if isinstance(error, WorkerAuthFailed):
            raise WorkerFailed(str(error)) from error
        if not isinstance(error, WorkerBusy):
            self.picker.failed(worker)

    def _already_finished(self, output: list[int], req: PreparedRequest) -> str | None:
        """A worker died right after its last token but before saying so: finish here."""
        if not output:
            return None
        s = req.sampling
        last = output[-1]
        if last in s.stop_token_ids or (last in self.eos_token_ids and not s.ignore_eos):
            return "stop"
        if len(output) >= s.max_tokens:
            return "length"
        return None

    def _abort_later(self, holds: dict[str, str], url: str) -> None:
        """Free the request's blocks on `url` without making anyone wait for it."""
        request_id = holds.pop(url, None)
        if request_id is None:
            return
        task = asyncio.get_running_loop().create_task(self.client.abort(url, request_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for pending aborts (at shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
