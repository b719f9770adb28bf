"""Real worker processes (`python -m services.cli worker ...`) registered in a real Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from router_server import free_port

from services.registry import RedisRegistry, WorkerRecord

REPO = Path(__file__).resolve().parents[2]
INTERNAL_TOKEN = "router-tests-internal-token"
LOAD_TIMEOUT = 180.0  # SmolLM2 loads in ~7 s alone, far slower when several start on 2 cores


@dataclass
class WorkerProcess:
    """One worker process and how to reach it."""

    role: str
    name: str  # served model name
    port: int
    proc: subprocess.Popen
    log_path: Path
    record: WorkerRecord | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        """SIGKILL: the worker dies without deregistering, as a crashed process would."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Cluster:
    """Workers started by one test module against one Redis; `stop()` ends every one of them."""

    registry_url: str
    log_dir: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def spawn(
        self, role: str, name: str = "smollm2", kv_backend: str = "tcp", kv_gib: float = 0.1
    ) -> WorkerProcess:
        """Start a worker (returns at once; `wait_registered` waits for it to serve)."""
        port, kv_port = free_port(), free_port()
        log_path = self.log_dir / f"{role}-{port}.log"
        env = os.environ | {
            "PDSERVE_INTERNAL_TOKEN": INTERNAL_TOKEN,
            "PYTHONUNBUFFERED": "1",
        }
        command = [
            sys.executable, "-m", "services.cli", "worker", "--role", role,
            "--model", "smollm2", "--served-model-name", name,
            "--host", "127.0.0.1", "--port", str(port), "--kv-port", str(kv_port),
            "--advertise-host", "127.0.0.1", "--registry", self.registry_url,
            "--dtype", "float32", "--threads", "1", "--kv-backend", kv_backend,
            "--kv-cache-memory", str(kv_gib),
        ]  # fmt: skip
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        worker = WorkerProcess(role, name, port, proc, log_path)
        self.workers.append(worker)
        return worker

    async def wait_registered(self, *workers: WorkerProcess) -> None:
        """Poll the registry until every worker's record is there (or one of them dies)."""
        registry = RedisRegistry(self.registry_url)
        deadline = time.monotonic() + LOAD_TIMEOUT
        try:
            while True:
                records = {r.url: r for r in await registry.list_workers()}
                for w in workers:
                    w.record = records.get(w.url)
                    if w.proc.poll() is not None:
                        raise RuntimeError(f"{w.role} worker exited:\n{w.log()}")
                if all(w.record is not None for w in workers):
                    return
                if time.monotonic() > deadline:
                    missing = [w for w in workers if w.record is None]
                    raise RuntimeError(f"workers never registered:\n{missing[0].log()}")
                await asyncio.sleep(0.2)  # registration is a heartbeat away at best
        finally:
            await registry.close()

    async def load_of(self, worker: WorkerProcess) -> WorkerRecord | None:
        """The worker's current registry record (None once it has expired)."""
        registry = RedisRegistry(self.registry_url)
        try:
            return next((r for r in await registry.list_workers() if r.url == worker.url), None)
        finally:
            await registry.close()

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
