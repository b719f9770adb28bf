"""The engine thread wrapper, around the real SmolLM2 engine (float32, decode role, 24 blocks).

A decode-role engine computes prompts itself when given no KV source, so one engine covers
plain generation and the KV pull protocol. The pull coroutine is the loop's own plug-in point;
tests pass coroutines that hold, fail or skip a pull (the real pull is in test_workers.py).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from worker_processes import PROMPTS, greedy, reference_tokens, torch_threads

from services.engine.config import EngineConfig
from services.engine.engine import KVFetch, LLMEngine
from services.engine.errors import InvalidRequestError, PromptTooLongError
from services.engine.llm import LLM
from services.engine.sequence import FinishReason
from services.engine_loop import EngineLoop, RequestStream
from services.worker_errors import EngineUnavailableError

NUM_BLOCKS = 24  # 384 tokens: small enough to make a request wait for blocks
CLOCK_TICKS = 100  # os.sysconf("SC_CLK_TCK") on Linux


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Like the workers (and the reference), one torch thread."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def engine() -> LLMEngine:
    return LLMEngine(
        EngineConfig(model="smollm2", role="decode", dtype="float32", num_kv_blocks=NUM_BLOCKS)
    )


@pytest.fixture
async def make_loop(engine: LLMEngine) -> AsyncIterator:
    """Start EngineLoops on the shared engine; afterwards the engine must hold nothing."""
    loops: list[EngineLoop] = []

    def make(**hooks) -> EngineLoop:
        loop = EngineLoop(engine, **hooks)
        loop.start()
        loops.append(loop)
        return loop

    yield make
    for loop in loops:
        await loop.stop()
    stats = engine.stats()
    leftovers = list(engine.requests) + list(engine.held)
    for request_id in leftovers:  # a test that failed midway: keep the next one clean
        engine.abort(request_id)
    assert not leftovers, f"requests left in the engine: {leftovers}"
    assert stats.free_blocks == stats.total_blocks


def ids(llm: LLM, text: str) -> list[int]:
    return llm.tokenizer.encode(text)


async def collect(stream: RequestStream) -> tuple[list[int], list]:
    tokens, outputs = [], []
    async for out in stream:
        tokens.extend(out.new_token_ids)
        outputs.append(out)
    return tokens, outputs


def cpu_ticks(thread: threading.Thread) -> int:
    """User + system CPU time the thread has used, in clock ticks."""
    with open(f"/proc/self/task/{thread.native_id}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


async def until(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def engine_thread() -> threading.Thread:
    return next(t for t in threading.enumerate() if t.name == "engine")


async def test_concurrent_requests_stream_the_offline_greedy_tokens(make_loop, offline_llm) -> None:
    loop = make_loop()
    prompts = [ids(offline_llm, p) for p in PROMPTS]
    expected = reference_tokens(offline_llm, prompts, 8)
    streams = [await loop.add(f"r{i}", p, greedy(8)) for i, p in enumerate(prompts)]
    results = await asyncio.gather(*(collect(s) for s in streams))

    assert [tokens for tokens, _ in results] == expected
    for _, outputs in results:
        assert all(len(o.new_token_ids) == 1 for o in outputs)  # one token per step
        assert [o.finished for o in outputs] == [False] * 7 + [True]
        assert outputs[-1].finish_reason is FinishReason.LENGTH
    assert loop.stats.free_blocks == NUM_BLOCKS  # published with the last outputs


async def test_the_event_loop_runs_while_the_engine_computes(make_loop, offline_llm) -> None:
    loop = make_loop()
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    stream = await loop.add("long-prompt", ids(offline_llm, PROMPTS[3]) * 2, greedy(1))
    at_submit = ticks
    await collect(stream)  # one step computes the whole 260-token prompt
    stop.set()
    await task
    assert ticks > at_submit  # the event loop kept running during that step


async def test_a_rejected_request_raises_at_add_and_the_loop_keeps_serving(
    make_loop, offline_llm
) -> None:
    loop = make_loop()
    prompt = ids(offline_llm, PROMPTS[0])
    with pytest.raises(InvalidRequestError, match="empty"):
        await loop.add("empty", [], greedy(4))
    with pytest.raises(PromptTooLongError, match="KV cache"):
        await loop.add("huge", list(range(100, 100 + NUM_BLOCKS * 16)), greedy(4))
    first = await loop.add("dup", prompt, greedy(4))
    with pytest.raises(InvalidRequestError, match="already in use"):
        await loop.add("dup", prompt, greedy(4))
    tokens, _ = await collect(first)
    assert tokens == reference_tokens(offline_llm, [prompt], 4)[0]


async def test_abort_mid_stream_ends_the_stream_and_frees_the_blocks(
    make_loop, offline_llm
) -> None:
    loop = make_loop()
    stream = await loop.add("long", ids(offline_llm, PROMPTS[1]), greedy(300))
    outputs = []
    async for out in stream:
        outputs.append(out)
        if len(outputs) == 3:
            assert await loop.abort("long") is True
    assert outputs[-1].finish_reason is FinishReason.ABORT and outputs[-1].new_token_ids == []
    assert loop.stats.free_blocks == NUM_BLOCKS
    assert await loop.abort("long") is False  # gone already
    assert await loop.abort("never-seen") is False


async def test_the_engine_thread_sleeps_while_idle_and_while_waiting_requests_are_blocked(
    make_loop, offline_llm
) -> None:
    """A pull that hangs holds a 19-block request; a second request cannot fit and waits.
    Neither state may spin the engine thread. When the pull fails, the prompt is recomputed
    and both requests still produce the reference tokens."""
    pull_started, pull_may_end = asyncio.Event(), asyncio.Event()

    async def stalled_pull(fetch: KVFetch) -> bool:
        pull_started.set()
        await pull_may_end.wait()
        return False  # the holder vanished: recompute

    loop = make_loop(pull_kv=stalled_pull)
    thread = engine_thread()
    before = cpu_ticks(thread)
    await asyncio.sleep(0.5)  # sampling the idle thread's CPU use, not waiting for a state
    assert cpu_ticks(thread) - before <= 2  # a spinning thread burns ~50 ticks in 0.5 s

    big = list(range(1000, 1300))  # 300 tokens: 19 blocks of 24
    small = ids(offline_llm, PROMPTS[3])  # 130 tokens: 9 blocks, do not fit beside it
    expected_big, expected_small = reference_tokens(offline_llm, [big, small], 4)
    big_stream = await loop.add(
        "big", big, greedy(4), kv_source={"from": "a prefill worker"}, output_ids=expected_big[:1]
    )
    await pull_started.wait()
    small_stream = await loop.add("small", small, greedy(4))
    await until(lambda: loop.stats.num_waiting == 1, "the small request to wait for blocks")
    assert loop.stats.num_fetching == 1
    before = cpu_ticks(thread)
    await asyncio.sleep(0.5)
    assert cpu_ticks(thread) - before <= 2

    pull_may_end.set()
    (big_tokens, _), (small_tokens, _) = await asyncio.gather(
        collect(big_stream), collect(small_stream)
    )
    assert big_tokens == expected_big[1:]  # the prefill's first token is not repeated
    assert small_tokens == expected_small


async def test_a_pull_skips_the_blocks_the_prefix_cache_already_has(make_loop, offline_llm) -> None:
    prompt = list(range(2000, 2032))  # exactly two blocks
    expected = reference_tokens(offline_llm, [prompt], 5)[0]
    fetches: list[KVFetch] = []

    async def record_pull(fetch: KVFetch) -> bool:
        fetches.append(fetch)
        return True  # nothing to copy: every block is cached here

    loop = make_loop(pull_kv=record_pull)
    tokens, _ = await collect(await loop.add("first", prompt, greedy(5)))
    assert tokens == expected
    stream = await loop.add(
        "second", prompt, greedy(5), kv_source={"from": "prefill"}, output_ids=expected[:1]
    )
    tokens, _ = await collect(stream)
    assert tokens == expected[1:]
    assert len(fetches) == 1
    assert fetches[0].num_cached_blocks == len(fetches[0].block_ids) == 2


async def test_abort_during_a_pull_stops_the_pull_before_freeing_its_blocks(make_loop) -> None:
    started, blocks_free_when_cancelled = asyncio.Event(), []
    loop: EngineLoop

    async def endless_pull(fetch: KVFetch) -> bool:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            blocks_free_when_cancelled.append(loop.stats.free_blocks)
        return True

    loop = make_loop(pull_kv=endless_pull)
    stream = await loop.add(
        "pulling", list(range(3000, 3100)), greedy(4), kv_source={"from": "x"}, output_ids=[5]
    )
    await started.wait()
    assert await loop.abort("pulling") is True
    _, outputs = await collect(stream)
    assert outputs[-1].finish_reason is FinishReason.ABORT
    # While the pull was being cancelled its 7 blocks were still the request's, not free.
    assert blocks_free_when_cancelled == [NUM_BLOCKS - 7]
    assert loop.stats.free_blocks == NUM_BLOCKS


async def test_a_request_that_could_outgrow_the_kv_cache_is_refused_at_add(make_loop) -> None:
    loop = make_loop()
    prompt = list(range(4000, 4370))  # 370 tokens fit the 384-token cache; 370 + 100 do not
    with pytest.raises(PromptTooLongError, match="KV cache holds 384 tokens"):
        await loop.add("grows", prompt, greedy(100))
    assert loop.stats.free_blocks == NUM_BLOCKS


async def test_stop_fails_requests_in_flight_and_refuses_new_ones(make_loop, offline_llm) -> None:
    loop = make_loop()
    stream = await loop.add("cut", ids(offline_llm, PROMPTS[0]), greedy(300))
    await anext(stream)
    await loop.stop()
    with pytest.raises(EngineUnavailableError, match="shutting down"):
        await collect(stream)
    with pytest.raises(EngineUnavailableError):
        await loop.add("late", [1, 2, 3], greedy(2))
    loop.engine.abort("cut")  # the thread is gone: the test may touch the engine directly


async def test_an_engine_crash_fails_every_request_instead_of_hanging(
    make_loop, offline_llm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: the real model runner raises on its third call."""
    crashes: list[BaseException] = []
    loop = make_loop(on_crash=crashes.append)
    run, calls = loop.engine.runner.run, 0

    def failing_run(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("injected fault: device lost")
        return run(*args, **kwargs)

    monkeypatch.setattr(loop.engine.runner, "run", failing_run)
    streams = [
        await loop.add(f"c{i}", ids(offline_llm, p), greedy(50)) for i, p in enumerate(PROMPTS[:2])
    ]
    for stream in streams:
        with pytest.raises(EngineUnavailableError, match="injected fault"):
            await collect(stream)
    await until(lambda: bool(crashes), "the crash report")
    assert isinstance(crashes[0], RuntimeError)
    assert not loop.alive and loop.error is crashes[0]
    with pytest.raises(EngineUnavailableError, match="injected fault"):
        await loop.add("after", [1, 2, 3], greedy(2))
    for stream in streams:
        loop.engine.abort(stream.request_id)
