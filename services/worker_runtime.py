"""A worker's moving parts and their lifecycle: load the model, run the engine thread, serve or
pull KV, beat in the registry; then drain and stop in the reverse order.

The HTTP server starts first and answers /health with 503 while the model loads, so an
orchestrator can tell "loading" from "dead"; the worker joins the registry only once it can
serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch

from kvtransfer import KVTransferError
from services.decode.kv_pull import RECOMPUTED, KVPuller
from services.engine.engine import EngineStats, LLMEngine, StepResult
from services.engine.errors import EngineError
from services.engine_loop import EngineLoop
from services.http_errors import ApiError
from services.prefill.kv_leases import KVLeases
from services.registry import (
    HEARTBEAT_INTERVAL,
    Heartbeat,
    RedisRegistry,
    Registry,
    RegistryError,
    WorkerLoad,
    WorkerRecord,
    open_registry,
)
from services.shared_cores import SharedCores, SharedCoresError
from services.step_log import StepLog, StepLogError
from services.worker_errors import EngineUnavailableError
from services.worker_metrics import WorkerMetrics, WorkerSnapshot
from services.worker_settings import WorkerSettings

log = logging.getLogger("pdserve.worker")

LOADING, READY, DRAINING, FAILED = "loading", "ready", "draining", "failed"
# Failures with a message that says it all (no traceback needed): bad model, registry, ports.
EXPECTED_START_ERRORS = (
    EngineError, RegistryError, KVTransferError, StepLogError, SharedCoresError, OSError,
)  # fmt: skip
NO_LOAD = EngineStats(0, 0, 0, 0, 0, 0, 0, 0)


class WorkerRuntime:
    """Owns the engine loop, the KV side of the worker's role, metrics and the heartbeat."""

    def __init__(
        self, settings: WorkerSettings, token: str, on_fatal: Callable[[str], None]
    ) -> None:
        self.settings = settings
        self.token = token
        self.on_fatal = on_fatal
        self.public_host = settings.public_host()
        self.url = f"http://{self.public_host}:{settings.port}"
        self.worker_id = settings.worker_id or f"{settings.role}-{self.public_host}-{settings.port}"
        self.state = LOADING
        self.failure: str | None = None
        self.started_at = time.time()
        self.engine: LLMEngine | None = None
        self.engine_loop: EngineLoop | None = None
        self.leases: KVLeases | None = None
        self.puller: KVPuller | None = None
        self.kv_port: int | None = None
        self.kv_ports: list[int] = []  # every rank's, with tensor parallelism
        self.metrics = WorkerMetrics(settings.role, self.snapshot)
        self.step_log: StepLog | None = None
        self.shared_cores: SharedCores | None = None
        self._registry: Registry | None = None
        self._heartbeat: Heartbeat | None = None
        self._background: set[asyncio.Task[Any]] = set()

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Load the model and start serving; any failure goes to ``on_fatal``."""
        s = self.settings
        try:
            if s.step_log:
                self.step_log = StepLog(s.step_log)  # a bad path fails before the model loads
            if s.share_cores:
                threads = s.threads or 1
                self.shared_cores = SharedCores(
                    s.share_cores, s.role, threads, threads, torch.set_num_threads
                )
            self._registry = open_registry(s.registry)
            if isinstance(self._registry, RedisRegistry):
                await self._registry.ping()  # fail before a long model load, not after
            t0 = time.perf_counter()
            engine = self.engine = await _in_daemon_thread(LLMEngine, s.engine_config())
            load_seconds = time.perf_counter() - t0
            if s.role == "prefill":
                self.leases = KVLeases(
                    engine,
                    self.token,
                    release=self._release,
                    backend=s.kv_backend,
                    host=s.host,
                    port=s.kv_port,
                    advertise_host=self.public_host,
                    lease_seconds=s.kv_lease_seconds,
                )
            else:
                self.puller = KVPuller(
                    engine, self.token, backend=s.kv_backend, timeout=s.kv_pull_timeout
                )
            self.engine_loop = EngineLoop(
                engine,
                pull_kv=self.puller.pull if self.puller else None,
                held_kv=self.leases,
                on_step=self._observe_step,
                on_crash=self._on_crash,
                around_step=self._around_step if self.shared_cores else None,
            )
            self.engine_loop.start()
            if self.leases is not None:
                await self.leases.start()
                self.kv_port, self.kv_ports = self.leases.port, self.leases.ports
            self._heartbeat = Heartbeat(self._registry, self.record, HEARTBEAT_INTERVAL)
            await self._heartbeat.start()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any start failure ends the worker with its message
            if not isinstance(exc, EXPECTED_START_ERRORS):
                log.exception("worker failed to start")
            self._fail(f"{type(exc).__name__}: {exc}")
            return
        self.state = READY
        stats = self.engine_loop.stats
        kv = f", KV {s.kv_backend} port {self.kv_port}" if self.kv_port else ""
        log.info(
            "%s worker %s ready at %s (model %s loaded in %.1f s, %d KV blocks of %d tokens%s)",
            s.role,
            self.worker_id,
            self.url,
            s.served_name,
            load_seconds,
            stats.total_blocks,
            s.block_size,
            kv,
        )

    def begin_drain(self) -> None:
        """Shutdown begins: refuse new requests and leave the registry at once."""
        if self.state in (READY, LOADING):
            self.state = DRAINING
        if self._heartbeat is not None:
            heartbeat, self._heartbeat = self._heartbeat, None
            self._spawn(heartbeat.stop())

    async def stop(self) -> None:
        """Stop everything in reverse order of start."""
        self.begin_drain()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self.leases is not None:
            await self.leases.stop()
        if self.engine_loop is not None:
            await self.engine_loop.stop()
        if self.engine is not None:  # no step runs anymore: the follower ranks may go
            await asyncio.to_thread(self.engine.close)
        if self.step_log is not None:
            self.step_log.close()
        if self.shared_cores is not None:
            self.shared_cores.close()
        if self.puller is not None:
            await self.puller.close()
        if self._registry is not None:
            await self._registry.close()

    def _fail(self, message: str) -> None:
        self.state, self.failure = FAILED, message
        self.begin_drain()
        self.on_fatal(message)

    def _around_step(self) -> contextlib.AbstractContextManager[int]:
        """Engine thread, --share-cores: the cores for the next step. A prefill worker with
        prompts queued behind this step takes the decode worker's cores too: decoding pauses
        for one prompt step so that the queue, which is what stretches TTFT, drains faster."""
        assert self.shared_cores is not None and self.engine is not None
        engine = self.engine
        backlog = (
            self.shared_cores.role == "prefill"
            and engine.stats().queued_prefill_tokens > engine.config.max_num_batched_tokens
        )
        return self.shared_cores.step(wide=backlog)

    def _observe_step(self, result: StepResult) -> None:
        """Engine thread, after every step that did work."""
        self.metrics.observe_step(result)
        if self.step_log is not None:
            self.step_log.write(result)

    def _on_crash(self, exc: BaseException) -> None:
        self._fail(f"the engine crashed: {type(exc).__name__}: {exc}")

    def _release(self, request_id: str) -> None:
        if self.engine_loop is not None:
            self.engine_loop.release(request_id)

    # ---- serving --------------------------------------------------------------------------

    def require_role(self, roles: tuple[str, ...], path: str) -> None:
        if self.settings.role not in roles:
            raise ApiError(
                404,
                f"this is a {self.settings.role} worker; {path} is served by "
                f"{' or '.join(roles)} workers",
            )

    def accepting(self) -> EngineLoop:
        """The engine loop, if a new request may enter now; else 503 or 429 with Retry-After."""
        if self.state == LOADING:
            raise ApiError(503, "the worker is still loading its model", retry_after=5)
        if self.state != READY or self.engine_loop is None or not self.engine_loop.alive:
            raise ApiError(503, f"the worker is not serving ({self.state})", retry_after=1)
        queued, limit = self.engine_loop.num_queued, self.settings.max_queued_requests
        if queued >= limit:
            raise ApiError(
                429,
                f"the worker's queue is full ({queued} requests waiting, limit {limit}); "
                f"retry later or on another worker",
                code="queue_full",
                retry_after=1,
            )
        return self.engine_loop

    async def abort(self, request_id: str) -> bool:
        """Stop a request wherever it is and free its blocks (held ones via their lease)."""
        if self.engine_loop is None:
            raise ApiError(503, "the worker is still loading its model", retry_after=5)
        return await self.engine_loop.abort(request_id)

    def abort_soon(self, request_id: str) -> None:
        """Abort from a place that cannot await (a stream's cleanup)."""
        if self.puller is not None:
            self.puller.forget(request_id)
        if self.engine_loop is not None and self.engine_loop.alive:
            self._spawn(self._abort_quietly(request_id))

    def kv_outcome(self, request_id: str) -> str:
        return self.puller.outcome(request_id) if self.puller else RECOMPUTED

    async def _abort_quietly(self, request_id: str) -> None:
        assert self.engine_loop is not None
        with contextlib.suppress(EngineUnavailableError):  # the engine is gone, blocks too
            await self.engine_loop.abort(request_id)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- reports ----------------------------------------------------------------------------

    def snapshot(self) -> WorkerSnapshot:
        """Load and KV counters for /metrics, read without touching the engine thread."""
        loop = self.engine_loop
        stats, queued = (loop.stats, loop.num_queued) if loop else (NO_LOAD, 0)
        if self.leases is not None:
            held = self.leases.metrics
            return WorkerSnapshot(
                stats,
                queued,
                held.bytes_sent,
                held.transfer_seconds,
                held.failures,
                held.active_leases,
            )
        if self.puller is not None:
            pulled = self.puller.metrics
            return WorkerSnapshot(
                stats,
                queued,
                pulled.bytes_received,
                pulled.transfer_seconds,
                self.puller.failures,
                0,
            )
        return WorkerSnapshot(stats, queued, 0, 0.0, 0, 0)

    def load(self) -> WorkerLoad:
        snap = self.snapshot()
        return WorkerLoad(
            queued_prefill_tokens=snap.stats.queued_prefill_tokens,
            num_running=snap.stats.num_running,
            num_waiting=snap.num_queued,
            free_blocks=snap.stats.free_blocks,
            total_blocks=snap.stats.total_blocks,
        )

    def record(self) -> WorkerRecord:
        """This worker's registry record, with its current load."""
        s = self.settings
        return WorkerRecord(
            worker_id=self.worker_id,
            role=s.role,
            url=self.url,
            model=s.served_name,
            tp_size=s.tensor_parallel_size,
            kv_backend=s.kv_backend,
            started_at=self.started_at,
            load=self.load(),
            updated_at=time.time(),
        )

    def health(self) -> dict[str, Any]:
        snap = self.snapshot()
        body: dict[str, Any] = {
            "status": "ok" if self.state == READY else self.state,
            "role": self.settings.role,
            "worker_id": self.worker_id,
            "model": self.settings.served_name,
            "url": self.url,
            "kv_backend": self.settings.kv_backend,
            "kv_port": self.kv_port,
            "kv_ports": self.kv_ports,
            "tp_size": self.settings.tensor_parallel_size,
            "load": asdict(self.load()),
            "kv_leases_active": snap.kv_leases_active,
        }
        if self.failure:
            body["error"] = self.failure
        return body


async def _in_daemon_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a long blocking call (a model load) in a daemon thread, so a shutdown signal that
    arrives meanwhile ends the process at once instead of waiting for the load to finish."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # delivered to the awaiting coroutine
            result, error = None, exc
        else:
            error = None
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="model-load", daemon=True).start()
    return await future
