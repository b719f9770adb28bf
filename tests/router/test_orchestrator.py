"""Failure handling with real worker processes: a decode worker killed mid-stream, a prefill
worker killed before it answers, and the colocated (both-role) path with the same guarantees.

Every request still completes with exactly the tokens the offline engine produces (greedy,
float32), and the client sees one uninterrupted stream."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import httpx
import openai
import pytest

from services.engine.sampling_params import SamplingParams

pytestmark = pytest.mark.timeout(300)

PROMPTS = [
    "The history of the printing press begins",
    "Write a short note to a friend about the weather. Dear Sam,",
    "List the planets of the solar system in order from the sun: Mercury,",
    "In the middle of the forest there was a small house where an old clockmaker lived. "
    "Every morning he",
    "Recipe for bread: first, mix the flour and water, then",
    "A train leaves the station at noon travelling at sixty miles per hour, and",
]
# Long enough that no stream finishes before the kill: at 192 tokens, after the attention
# kernels made decode steps faster, a stream on one worker once finished before every stream
# on the other had its second token, and the test failed before it could kill anything.
MAX_TOKENS = 384


@pytest.fixture(scope="module")
def reference(offline) -> list[list[int]]:
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True)
    return [out.token_ids for out in offline.generate(PROMPTS, params)]


@pytest.fixture(scope="module")
def extra_workers(cluster, base_workers):
    """A second prefill and a second decode worker, joining the base pair (same model)."""
    prefill = cluster.spawn("prefill", kv_backend="tcp")
    decode = cluster.spawn("decode", kv_backend="tcp")
    asyncio.run(cluster.wait_registered(prefill, decode))
    return prefill, decode


@pytest.fixture(scope="module")
def both_workers(cluster):
    """Two both-role workers under their own served name, so only their router sees them."""
    workers = [cluster.spawn("both", name="smollm2-both") for _ in range(2)]
    asyncio.run(cluster.wait_registered(*workers))
    return workers


async def stream_tokens(client: openai.AsyncOpenAI, model: str, prompt: str, got: list[int]):
    """Stream one greedy completion, appending its token ids to `got` as they arrive."""
    stream = await client.completions.create(
        model=model,
        prompt=prompt,
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        logprobs=0,
        extra_body={"ignore_eos": True, "return_tokens_as_token_ids": True},
    )
    finish = None
    async for chunk in stream:
        choice = chunk.choices[0]
        if choice.logprobs:
            got += [int(t.removeprefix("token_id:")) for t in choice.logprobs.tokens]
        finish = choice.finish_reason or finish
    return finish


def running_on(worker) -> float:
    """Requests the worker is running now, from its /metrics."""
    text = httpx.get(worker.url + "/metrics", timeout=5).text
    match = re.search(r'^pdserve:num_requests_running\{role="\w+"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


async def kill_once_running(worker, outputs: list[list[int]], tasks: list[asyncio.Task]) -> None:
    """Kill `worker` once it runs some of the streams and every stream has tokens out."""
    deadline = time.monotonic() + 120
    while not (running_on(worker) > 0 and all(len(o) >= 2 for o in outputs)):
        assert time.monotonic() < deadline, "the streams never reached the worker"
        assert not any(t.done() for t in tasks), "a stream finished before the kill"
        await asyncio.sleep(0.02)  # polling the worker's gauge
    worker.kill()


def kv_failures(worker) -> float:
    """KV pulls that failed on a decode worker so far, from its /metrics."""
    text = httpx.get(worker.url + "/metrics", timeout=5).text
    match = re.search(r'^pdserve:kv_transfer_failures_total\{role="\w+"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_each_request_is_decoded_where_its_kv_can_be_pulled(
    redis_router, base_workers, extra_workers, reference
):
    """Two pairs on different KV backends (UCX, TCP) serve one model: a decode worker on the
    other backend could not pull the KV and would recompute the prompt, so none does."""
    router = redis_router()
    client = openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
    decoders = [base_workers[1], extra_workers[1]]
    before = [kv_failures(w) for w in decoders]
    outputs: list[list[int]] = [[] for _ in PROMPTS]
    finishes = await asyncio.gather(
        *(stream_tokens(client, "smollm2", p, out) for p, out in zip(PROMPTS, outputs, strict=True))
    )
    assert finishes == ["length"] * len(PROMPTS)
    assert outputs == reference
    assert [kv_failures(w) for w in decoders] == before


async def test_killing_a_decode_worker_mid_stream_completes_every_request(
    redis_router, extra_workers, reference, caplog
):
    caplog.set_level(logging.WARNING, logger="pdserve.router")
    router = redis_router()
    client = openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
    _, doomed = extra_workers
    outputs: list[list[int]] = [[] for _ in PROMPTS]
    tasks = [
        asyncio.create_task(stream_tokens(client, "smollm2", p, out))
        for p, out in zip(PROMPTS, outputs, strict=True)
    ]
    await kill_once_running(doomed, outputs, tasks)
    finishes = await asyncio.gather(*tasks)
    assert finishes == ["length"] * len(PROMPTS)
    for i, (got, want) in enumerate(zip(outputs, reference, strict=True)):
        assert got == want, f"request {i} differs from the offline engine"
    moved = [r for r in caplog.records if "decode failed, continuing elsewhere" in r.message]
    assert moved and all(doomed.url in r.message for r in moved)


async def test_killing_a_prefill_worker_retries_on_the_other(
    redis_router, extra_workers, reference, caplog
):
    caplog.set_level(logging.WARNING, logger="pdserve.router")
    router = redis_router()
    client = openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
    doomed, _ = extra_workers
    doomed.kill()  # its registry record lives on until the TTL: the router still picks it
    responses = await asyncio.gather(
        *(
            client.completions.create(
                model="smollm2",
                prompt=prompt,
                max_tokens=8,
                temperature=0,
                logprobs=0,
                extra_body={"ignore_eos": True, "return_tokens_as_token_ids": True},
            )
            for prompt in PROMPTS[:4]
        )
    )
    for response, want in zip(responses, reference[:4], strict=True):
        tokens = [int(t.removeprefix("token_id:")) for t in response.choices[0].logprobs.tokens]
        assert tokens == want[:8]
    retried = [r for r in caplog.records if "prefill failed, trying another worker" in r.message]
    assert retried and all(doomed.url in r.message for r in retried)


async def test_both_role_workers_serve_and_survive_a_death_mid_stream(
    redis_router, both_workers, reference, caplog
):
    caplog.set_level(logging.WARNING, logger="pdserve.router")
    router = redis_router(served_model_name="smollm2-both")
    client = openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
    health = httpx.get(router.url + "/health").json()
    assert health["workers"] == {"prefill": 0, "decode": 0, "both": 2}
    chat = await client.chat.completions.create(
        model="smollm2-both",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=24,
    )
    assert "Paris" in chat.choices[0].message.content

    outputs: list[list[int]] = [[] for _ in PROMPTS]
    tasks = [
        asyncio.create_task(stream_tokens(client, "smollm2-both", p, out))
        for p, out in zip(PROMPTS, outputs, strict=True)
    ]
    await kill_once_running(both_workers[1], outputs, tasks)
    assert await asyncio.gather(*tasks) == ["length"] * len(PROMPTS)
    for i, (got, want) in enumerate(zip(outputs, reference, strict=True)):
        assert got == want, f"request {i} differs from the offline engine"
    assert any("generate failed, continuing elsewhere" in r.message for r in caplog.records)
