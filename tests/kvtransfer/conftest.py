"""Fixtures for kvtransfer tests: one torch thread, and a holder process per backend."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

# Run as a bare `pytest`, sys.path holds tests/ but not the checkout, so `import kvtransfer`
# would find tests/kvtransfer as a namespace package; put the real package first.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pytest
import pytest_asyncio
import torch
from holder_harness import HolderProcess


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Each process of these tests uses one torch thread (two cores, two processes)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["tcp", "ucx"])
async def holder(request: pytest.FixtureRequest) -> AsyncIterator[HolderProcess]:
    """One holder process per backend, shared by a module's tests."""
    process = await HolderProcess.spawn(request.param)
    try:
        yield process
    finally:
        if process.proc.returncode is None:
            final = await process.stop()
            # Every lease granted was handed back exactly once (released, expired or at stop).
            assert final["active_leases"] == 0
            assert len(process.released) == process.granted
        else:
            await process.kill()
