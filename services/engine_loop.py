"""The engine in its own thread, so HTTP never waits for a step and a step never waits for HTTP.

The event loop talks to the engine thread through one command queue (add, abort, release,
kv_arrived) guarded by a condition variable; the engine thread applies the commands between
steps and hands each step's outputs back with ``call_soon_threadsafe``, into one asyncio queue
per request. When there is nothing to compute, the engine thread sleeps on the condition until
a command arrives: no spinning, no polling.

KV hand-offs never race an abort over a block. Decode role: the engine announces a ``KVFetch``
as soon as it has scheduled the blocks, before that step's model run, so the pull overlaps the
step; the loop runs the pull coroutine, then reports ``kv_arrived``. An abort that arrives while a
pull is writing into the request's blocks cancels the pull first and frees the blocks only
afterwards. Prefill role: a finished prompt's blocks are leased on the loop in the same batch
that delivers its output, and aborting a held request ends its lease (the lease then frees
the blocks once no read is using them) instead of freeing blocks under a reader.

If the engine thread crashes, every request in flight gets an ``EngineUnavailableError`` and
every later call raises it at once: nothing hangs. (A request that could outgrow the KV cache
is refused at ``add``: the engine caps its context length at the cache's size.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from services.engine.engine import EngineStats, KVFetch, LLMEngine, RequestOutput, StepResult
from services.engine.sampling_params import SamplingParams
from services.engine.sequence import FinishReason
from services.worker_errors import EngineUnavailableError

log = logging.getLogger("pdserve.engine_loop")

PullKV = Callable[[KVFetch], Awaitable[bool]]


class HeldKV(Protocol):
    """Prefill role: who takes care of a finished prompt's held blocks (a KV lease holder)."""

    def grant(self, output: RequestOutput) -> None:
        """Event loop: lease the blocks a PREFILL_DONE output holds (before the caller sees it)."""

    def revoke(self, request_id: str) -> bool:
        """Event loop: the held request was aborted: end its lease, which frees its blocks."""


@dataclass
class _Add:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    kv_source: dict[str, Any] | None
    output_ids: list[int] | None
    stream: RequestStream
    accepted: asyncio.Future[None]


@dataclass
class _Abort:
    request_id: str
    done: asyncio.Future[bool] | None


@dataclass
class _Release:
    request_id: str


@dataclass
class _KVArrived:
    request_id: str
    ok: bool


_Command = _Add | _Abort | _Release | _KVArrived


class RequestStream:
    """One request's outputs, in step order; iteration ends after the finishing output.

    An aborted request ends with an output whose finish_reason is ABORT and no tokens.
    """

    def __init__(self, request_id: str):
        self.request_id = request_id
        self.finished = False
        self._queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()

    def _put(self, item: RequestOutput | BaseException) -> None:
        self._queue.put_nowait(item)

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        self.finished = item.finished
        return item


def aborted_output(request_id: str) -> RequestOutput:
    """The output that ends an aborted request's stream."""
    return RequestOutput(request_id, [], finished=True, finish_reason=FinishReason.ABORT)


class EngineLoop:
    """Runs ``engine.step()`` in a dedicated thread; every public method is for the event loop.

    ``release`` and ``kv_arrived`` are thread-safe as well (a KV holder may call back from
    another thread). ``on_step`` runs on the engine thread after every step that did work;
    ``around_step``, if given, wraps every step (services.shared_cores uses it to take cores).
    """

    def __init__(
        self,
        engine: LLMEngine,
        *,
        pull_kv: PullKV | None = None,
        held_kv: HeldKV | None = None,
        on_step: Callable[[StepResult], None] | None = None,
        on_crash: Callable[[BaseException], None] | None = None,
        around_step: Callable[[], AbstractContextManager[object]] | None = None,
    ):
        self.engine = engine
        self._around_step = around_step or contextlib.nullcontext
        self._pull_kv = pull_kv
        self._held_kv = held_kv
        self._on_step = on_step
        self._on_crash = on_crash
        self._cond = threading.Condition()
        self._commands: deque[_Command] = deque()
        self._pending_adds = 0
        self._stopping = False
        self._error: BaseException | None = None
        self._stats = engine.stats()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Engine thread only: the stream of every request whose outputs are still coming.
        self._streams: dict[str, RequestStream] = {}
        self._outbox: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        # KV pulls: request id -> the pull task, or None while the task is about to start;
        # and the requests whose abort waits for their pull to stop writing.
        self._pulls: dict[str, asyncio.Task[None] | None] = {}
        self._aborting: set[str] = set()

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the engine thread; call from the event loop that will consume the outputs."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop the engine thread after its current step; pending requests fail."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        with self._cond:
            pulls = [t for t in self._pulls.values() if t is not None]
        for task in pulls:
            task.cancel()
        await asyncio.gather(*pulls, return_exceptions=True)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    @property
    def alive(self) -> bool:
        """True while the engine thread runs and accepts requests."""
        with self._cond:
            if self._stopping or self._error is not None or self._thread is None:
                return False
        return self._thread.is_alive()

    @property
    def error(self) -> BaseException | None:
        """What crashed the engine thread, if it did."""
        return self._error

    # ---- what the HTTP side reads ----------------------------------------------------------

    @property
    def stats(self) -> EngineStats:
        """The engine's load after its last step (a snapshot; never blocks on a step)."""
        with self._cond:
            return self._stats

    @property
    def num_queued(self) -> int:
        """Requests not yet admitted: submitted but not applied, plus the engine's waiting."""
        with self._cond:
            return self._pending_adds + self._stats.num_waiting

    # ---- commands -------------------------------------------------------------------------

    async def add(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        kv_source: dict[str, Any] | None = None,
        output_ids: list[int] | None = None,
    ) -> RequestStream:
        """Submit a request; returns once the engine accepted it, raising its error if not."""
        loop = asyncio.get_running_loop()
        stream = RequestStream(request_id)
        accepted: asyncio.Future[None] = loop.create_future()
        self._submit(
            _Add(request_id, prompt_ids, params, kv_source, output_ids, stream, accepted),
            is_add=True,
        )
        try:
            await accepted
        except asyncio.CancelledError:
            # The caller went away before the engine answered: don't leave the request running.
            self._submit(_Abort(request_id, None), quiet=True)
            raise
        return stream

    async def abort(self, request_id: str) -> bool:
        """Stop a request and free its blocks; False if the engine did not know it."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._submit(_Abort(request_id, done))
        return await done

    def release(self, request_id: str) -> None:
        """Prefill role: the held blocks of ``request_id`` may be reused (pulled or expired)."""
        self._submit(_Release(request_id), quiet=True)

    def kv_arrived(self, request_id: str, ok: bool) -> None:
        """Decode role: the pull finished (ok) or failed (the engine recomputes the prompt)."""
        self._submit(_KVArrived(request_id, ok), quiet=True)

    def _submit(self, command: _Command, is_add: bool = False, quiet: bool = False) -> None:
        with self._cond:
            if self._error is not None or self._stopping or self._thread is None:
                if quiet:
                    return
                raise self._unavailable()
            self._commands.append(command)
            if is_add:
                self._pending_adds += 1
            self._cond.notify()

    def _unavailable(self) -> EngineUnavailableError:
        if self._error is not None:
            return EngineUnavailableError(f"the engine failed and stopped: {self._error!r}")
        return EngineUnavailableError("the engine is not running (the worker is shutting down)")

    # ---- the engine thread --------------------------------------------------------------------

    def _run(self) -> None:
        engine = self.engine
        runnable = False
        try:
            while True:
                with self._cond:
                    while not (self._commands or self._stopping or runnable):
                        self._cond.wait()
                    if self._stopping:
                        break
                    commands, self._commands = self._commands, deque()
                for command in commands:
                    self._apply(command)
                self._publish(pending_applied=sum(isinstance(c, _Add) for c in commands))
                did_work = False
                if engine.has_work():
                    pulls = self._begin_pulls if self._pull_kv is not None else None
                    with self._around_step():
                        result = engine.step(on_fetches=pulls)
                    did_work = bool(
                        result.outputs
                        or result.kv_fetches
                        or result.num_prefill_tokens
                        or result.num_decode_tokens
                    )
                    self._deliver(result)
                    if did_work and self._on_step is not None:
                        self._on_step(result)
                    self._publish()
                # A step that did nothing (every waiting request is blocked on blocks that
                # only a command can free) must not repeat until a command arrives.
                runnable = did_work and engine.has_work()
        except BaseException as exc:  # any crash must fail requests, not hang them
            log.exception("engine thread crashed")
            self._crash(exc)
            return
        self._fail_everything(self._unavailable())
        self._flush()

    def _publish(self, pending_applied: int = 0) -> None:
        """Refresh the stats snapshot, then hand the event loop what this round produced.

        In that order, so whoever sees a request's result also sees the load it left behind.
        """
        with self._cond:
            self._stats = self.engine.stats()
            self._pending_adds -= pending_applied
        self._flush()

    def _apply(self, command: _Command) -> None:
        engine = self.engine
        if isinstance(command, _Add):
            try:
                engine.add_request(
                    command.request_id,
                    command.prompt_ids,
                    command.params,
                    kv_source=command.kv_source,
                    output_ids=command.output_ids,
                )
            except Exception as exc:  # the caller maps it to an HTTP status
                self._post(_settle, command.accepted, exc)
                return
            self._streams[command.request_id] = command.stream
            self._post(_settle, command.accepted, None)
        elif isinstance(command, _Abort):
            if self._defer_abort_until_pull_stops(command.request_id):
                aborted = True
            elif self._held_kv is not None and command.request_id in engine.held:
                self._post(self._held_kv.revoke, command.request_id)
                aborted = True
            else:
                aborted = engine.abort(command.request_id)
                stream = self._streams.pop(command.request_id, None)
                if stream is not None:
                    self._post(stream._put, aborted_output(command.request_id))
            if command.done is not None:
                self._post(_settle, command.done, None, aborted)
        elif isinstance(command, _Release):
            engine.release(command.request_id)
        else:
            engine.kv_arrived(command.request_id, command.ok)

    def _deliver(self, result: StepResult) -> None:
        for out in result.outputs:
            if out.finish_reason is FinishReason.PREFILL_DONE and self._held_kv is not None:
                self._post(self._held_kv.grant, out)
            stream = self._streams.pop(out.request_id, None) if out.finished else None
            stream = stream or self._streams.get(out.request_id)
            if stream is not None:
                self._post(stream._put, out)
        for fetch in result.kv_fetches:  # no puller: the prompts are recomputed here
            self.engine.kv_arrived(fetch.request_id, False)

    def _begin_pulls(self, fetches: list[KVFetch]) -> None:
        """Engine thread, before the step's model run: start the pulls on the event loop now,
        so the KV travels while this step computes and the request joins the next one."""
        for fetch in fetches:
            with self._cond:
                self._pulls[fetch.request_id] = None
            self._post(self._start_pull, fetch)
        self._flush()

    def _post(self, callback: Callable[..., Any], *args: Any) -> None:
        """Engine thread: queue a call for the event loop; ``_flush`` sends the batch."""
        self._outbox.append((callback, args))

    def _flush(self) -> None:
        if not self._outbox:
            return
        batch, self._outbox = self._outbox, []
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the event loop is closed: nobody to tell
            self._loop.call_soon_threadsafe(_call_all, batch)

    def _crash(self, exc: BaseException) -> None:
        with self._cond:
            self._error = exc
        self._fail_everything(self._unavailable())
        if self._on_crash is not None:
            self._post(self._on_crash, exc)
        self._flush()

    def _fail_everything(self, error: EngineUnavailableError) -> None:
        with self._cond:
            commands, self._commands = self._commands, deque()
            self._pending_adds = 0
        for command in commands:
            if isinstance(command, _Add):
                self._post(_settle, command.accepted, error)
            elif isinstance(command, _Abort) and command.done is not None:
                self._post(_settle, command.done, None, False)
        streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            self._post(stream._put, error)
        self._post(self._cancel_pulls)

    # ---- KV pulls, on the event loop --------------------------------------------------------

    def _defer_abort_until_pull_stops(self, request_id: str) -> bool:
        """Engine thread: if a pull may be writing into the request's blocks, stop it first.

        The pull's end then submits the abort again, and only that one frees the blocks.
        """
        with self._cond:
            if request_id not in self._pulls:
                return False
            self._aborting.add(request_id)
            task = self._pulls[request_id]
        if task is not None:
            self._post(task.cancel)
        return True

    def _start_pull(self, fetch: KVFetch) -> None:
        rid = fetch.request_id
        with self._cond:
            if rid in self._aborting:
                self._end_pull(rid, aborted=True)
                return
            self._pulls[rid] = asyncio.create_task(self._pull(fetch), name=f"kv-pull-{rid}")

    async def _pull(self, fetch: KVFetch) -> None:
        assert self._pull_kv is not None
        try:
            ok = await self._pull_kv(fetch)
        except asyncio.CancelledError:
            self._end_pull(fetch.request_id, aborted=True)
            raise
        except Exception:  # a broken pull must not strand the request
            log.exception("KV pull for %s failed unexpectedly; recomputing", fetch.request_id)
            ok = False
        self._end_pull(fetch.request_id, aborted=False, ok=ok)

    def _end_pull(self, request_id: str, aborted: bool, ok: bool = False) -> None:
        # Nothing writes into the request's blocks anymore: the engine may free or use them.
        with self._cond:
            self._pulls.pop(request_id, None)
            aborted = aborted or request_id in self._aborting
            self._aborting.discard(request_id)
        if aborted:
            self._submit(_Abort(request_id, None), quiet=True)
        else:
            self._submit(_KVArrived(request_id, ok), quiet=True)

    def _cancel_pulls(self) -> None:
        with self._cond:
            tasks = [t for t in self._pulls.values() if t is not None]
        for task in tasks:
            task.cancel()


def _settle(future: asyncio.Future[Any], error: BaseException | None, value: Any = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def _call_all(batch: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> None:
    for callback, args in batch:
        callback(*args)
