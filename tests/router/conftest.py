"""Router fixtures: SmolLM2's tokenizer (loaded once) and routers served on real sockets."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from router_server import RouterThread

from services.engine.checkpoint import resolve
from services.engine.tokenizer import Tokenizer
from services.registry import InMemoryRegistry, Registry
from services.router.api_keys import APIKeys
from services.router.app import Router, RouterConfig

MODEL = "smollm2"


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_checkpoint(resolve(MODEL))


RouterFactory = Callable[..., RouterThread]


@pytest.fixture(scope="module")
def start_router(tokenizer: Tokenizer) -> Iterator[RouterFactory]:
    """Start routers on free ports; all are stopped when the module's tests are done."""
    started: list[RouterThread] = []

    def start(
        registry: Registry | None = None,
        api_keys: list[str] | None = None,
        internal_token: str | None = None,
        **config: object,
    ) -> RouterThread:
        router = Router(
            RouterConfig(model=MODEL, **config),  # type: ignore[arg-type]
            registry if registry is not None else InMemoryRegistry(),
            APIKeys(api_keys or []),
            internal_token,
            tokenizer=tokenizer,
        )
        thread = RouterThread(router).start()
        started.append(thread)
        return thread

    yield start
    for thread in started:
        thread.stop()
