"""A real router (uvicorn on a real socket) in a background thread of the test process."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Coroutine
from typing import Any

import uvicorn

from services.router.app import Router, create_app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RouterThread:
    """Serves `router` on 127.0.0.1:<free port> until `stop()`."""

    def __init__(self, router: Router):
        self.router = router
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(router), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.server.serve())

    def start(self, timeout: float = 30.0) -> RouterThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"router did not start on port {self.port}")
            time.sleep(0.01)  # polling the started flag; uvicorn offers no event to wait on
        return self

    def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run a coroutine on the router's own loop (for its registry and state)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
