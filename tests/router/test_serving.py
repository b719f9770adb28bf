"""End to end: the official openai client against the router, one prefill and one decode worker
(real processes, real Redis, KV over UCX), all float32 and greedy unless a test says otherwise."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest
from cluster import INTERNAL_TOKEN
from router_server import free_port

from services.engine.sampling_params import SamplingParams

pytestmark = pytest.mark.timeout(300)

PASSAGE = (
    "The river wound through the valley, past orchards and old stone mills, until it reached "
    "the sea. Farmers brought their apples to the market every autumn, and the town grew "
    "around the bridge where the roads met. Travellers told stories of mountains to the north, "
    "of forests so deep that the sun never touched the ground, and of cities built on water. "
)


def prompts_of_mixed_lengths(n: int) -> list[str]:
    words = (PASSAGE * 4).split()
    return [" ".join(words[: 4 + 13 * i]) for i in range(n)]


def token_ids(logprob_tokens: list[str]) -> list[int]:
    return [int(t.removeprefix("token_id:")) for t in logprob_tokens]


@pytest.fixture(scope="module")
def router(redis_router, base_workers):
    return redis_router()


@pytest.fixture
def client(router) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)


async def test_capital_of_france_is_paris(client):
    response = await client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=24,
    )
    assert "Paris" in response.choices[0].message.content
    assert response.id.startswith("chatcmpl-")
    assert response.object == "chat.completion"
    assert response.model == "smollm2"
    assert response.choices[0].finish_reason in ("stop", "length")
    usage = response.usage
    assert usage.prompt_tokens > 10
    assert 0 < usage.completion_tokens <= 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_openai_client_streams_the_same_text_it_returns_whole(client):
    messages = [{"role": "user", "content": "Name three colours of the rainbow."}]
    whole = await client.chat.completions.create(
        model="smollm2", messages=messages, temperature=0, max_tokens=20
    )
    stream = await client.chat.completions.create(
        model="smollm2",
        messages=messages,
        temperature=0,
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.id == chunks[0].id and c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens

    prompt = "Once upon a time"
    done = await client.completions.create(
        model="smollm2", prompt=prompt, temperature=0, max_tokens=12
    )
    assert done.id.startswith("cmpl-") and done.object == "text_completion"
    assert done.usage.completion_tokens == 12 and done.choices[0].finish_reason == "length"
    pieces = [
        c.choices[0].text
        async for c in await client.completions.create(
            model="smollm2", prompt=prompt, temperature=0, max_tokens=12, stream=True
        )
    ]
    assert "".join(pieces) == done.choices[0].text


async def test_sixteen_concurrent_greedy_requests_match_the_offline_engine(client, offline):
    prompts = prompts_of_mixed_lengths(16)
    budgets = [8, 16, 24, 32]
    expected: dict[int, list[int]] = {}
    for budget in budgets:
        group = [i for i in range(16) if budgets[i % 4] == budget]
        outs = offline.generate(
            [prompts[i] for i in group], SamplingParams(max_tokens=budget, temperature=0)
        )
        expected |= {i: out.token_ids for i, out in zip(group, outs, strict=True)}

    async def one(i: int) -> list[int]:
        args = dict(
            model="smollm2",
            prompt=prompts[i],
            max_tokens=budgets[i % 4],
            temperature=0,
            logprobs=0,
            extra_body={"return_tokens_as_token_ids": True},
        )
        if i % 2:
            response = await client.completions.create(**args)
            return token_ids(response.choices[0].logprobs.tokens)
        tokens: list[str] = []
        async for chunk in await client.completions.create(stream=True, **args):
            tokens += chunk.choices[0].logprobs.tokens if chunk.choices[0].logprobs else []
        return token_ids(tokens)

    got = await asyncio.gather(*(one(i) for i in range(16)))
    for i in range(16):
        assert got[i] == expected[i], f"prompt {i} ({len(prompts[i].split())} words)"


async def test_stop_string_cuts_the_text_and_aborts_the_decode(
    client, offline, cluster, base_workers
):
    prompt = "The capital of France is Paris. The capital of Germany is"
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    reference = offline.generate([prompt], params)[0]
    words = reference.text.split()
    assert len(words) >= 4, reference.text
    stop = words[2]
    response = await client.completions.create(
        model="smollm2",
        prompt=prompt,
        temperature=0,
        max_tokens=2000,
        stop=[stop],
        extra_body={"ignore_eos": True},
    )
    choice = response.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.text == reference.text[: reference.text.index(stop)]
    # Nothing but the stop string could end a 2000-token request this early: the router
    # aborted it on the decode worker, which holds no blocks any more.
    assert response.usage.completion_tokens < 24
    await wait_idle(cluster, base_workers, since=time.time())


async def test_one_token_requests_end_at_prefill(client):
    response = await client.completions.create(
        model="smollm2", prompt="Hello there", max_tokens=1, temperature=0
    )
    assert response.usage.completion_tokens == 1
    assert response.choices[0].finish_reason == "length"


async def test_prompt_as_token_ids_and_chat_logprobs(client, tokenizer):
    ids = tokenizer.encode("The quick brown fox")
    by_ids = await client.completions.create(
        model="smollm2", prompt=ids, max_tokens=6, temperature=0
    )
    by_text = await client.completions.create(
        model="smollm2", prompt="The quick brown fox", max_tokens=6, temperature=0
    )
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage.prompt_tokens == len(ids)

    chat = await client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Say hello."}],
        max_completion_tokens=5,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens <= 5
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        # Greedy: the chosen token is the likeliest one.
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-5)


async def test_seeded_sampling_repeats(client):
    async def sample() -> str:
        response = await client.completions.create(
            model="smollm2", prompt="My favourite animal is", max_tokens=16, temperature=0.9,
            top_p=0.95, seed=1234, extra_body={"top_k": 50},
        )  # fmt: skip
        return response.choices[0].text

    assert await sample() == await sample()


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "whole"])
async def test_client_disconnect_aborts_and_frees_blocks_on_both_sides(
    router, cluster, base_workers, stream
):
    _, decode = base_workers
    body = {
        "model": "smollm2",
        "prompt": PASSAGE * 3,
        "max_tokens": 2000,
        "ignore_eos": True,
        "stream": stream,
    }
    aborted_before = _counter(router, 'pdserve:requests_total{outcome="aborted"}')
    async with httpx.AsyncClient(timeout=60) as http:
        if stream:
            async with http.stream("POST", router.url + "/v1/completions", json=body) as response:
                assert response.status_code == 200
                events = 0
                async for line in response.aiter_lines():
                    events += line.startswith("data: ")
                    if events == 3:
                        break
        else:
            waiting = asyncio.create_task(http.post(router.url + "/v1/completions", json=body))
            deadline = time.monotonic() + 60
            while _gauge(decode, "pdserve:num_requests_running") < 1:
                assert time.monotonic() < deadline and not waiting.done()
                await asyncio.sleep(0.05)  # polling the decode worker's gauge
            waiting.cancel()  # the client gives up: its connection closes
    # The decode worker was holding the request's blocks; both sides must return to idle.
    await wait_idle(cluster, base_workers, since=time.time())
    deadline = time.monotonic() + 10
    while _counter(router, 'pdserve:requests_total{outcome="aborted"}') != aborted_before + 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)  # the router notices the disconnect on its own loop


async def test_a_full_router_answers_429_with_retry_after(redis_router, base_workers):
    small = redis_router(max_queued_requests=1)
    body = {
        "model": "smollm2",
        "prompt": "Count to one thousand:",
        "max_tokens": 500,
        "ignore_eos": True,
        "stream": True,
    }
    async with httpx.AsyncClient(timeout=60) as http:
        async with http.stream("POST", small.url + "/v1/completions", json=body) as first:
            assert first.status_code == 200
            busy = await http.post(small.url + "/v1/completions", json=body | {"stream": False})
            assert busy.status_code == 429
            assert int(busy.headers["retry-after"]) >= 1
            assert busy.json()["error"]["type"] == "rate_limit_error"
        # Once the first request is gone, the router takes requests again.
        deadline = time.monotonic() + 30
        while small.router.admission.in_flight:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)  # the abort of the first request is on its way
        ok = await http.post(
            small.url + "/v1/completions",
            json={"model": "smollm2", "prompt": "Hi", "max_tokens": 2},
        )
        assert ok.status_code == 200


async def test_metrics_follow_the_requests(router):
    text = httpx.get(router.url + "/metrics").text
    assert _counter(router, 'pdserve:requests_total{outcome="ok"}') >= 10
    assert _counter(router, "pdserve:time_to_first_token_seconds_count") >= 10
    assert _counter(router, "pdserve:generation_tokens_total") > 100
    assert "pdserve:time_per_output_token_seconds_count" in text


async def wait_idle(cluster, workers, since: float) -> None:
    """Wait for load reports written after `since` that show no request and no used block."""
    deadline = time.monotonic() + 30
    while True:
        records = [await cluster.load_of(w) for w in workers]
        if all(
            r is not None
            and r.updated_at > since
            and r.load.free_blocks == r.load.total_blocks
            and r.load.num_running == 0
            for r in records
        ):
            return
        assert time.monotonic() < deadline, f"blocks still held: {records}"
        await asyncio.sleep(0.2)  # load reports come once a second


def _gauge(worker, name: str) -> float:
    text = httpx.get(worker.url + "/metrics", timeout=5).text
    line = next(ln for ln in text.splitlines() if ln.startswith(name + "{"))
    return float(line.split()[-1])


def _counter(router, name: str) -> float:
    text = httpx.get(router.url + "/metrics").text
    line = next(ln for ln in text.splitlines() if ln.startswith(name + " "))
    return float(line.split()[-1])


def test_pdserve_router_command_serves_and_stops_cleanly(redis_url, base_workers, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = os.environ | {"PDSERVE_INTERNAL_TOKEN": INTERNAL_TOKEN, "PDSERVE_API_KEYS": ""}
    command = [
        sys.executable, "-m", "services.cli", "router", "--host", "127.0.0.1",
        "--port", str(port), "--registry", redis_url, "--api-key", "sk-cli",
    ]  # fmt: skip
    log = (tmp_path / "router.log").open("wb")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "router.log").read_text()
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass  # still loading the tokenizer
            assert time.monotonic() < deadline, "the router never became healthy"
            time.sleep(0.2)
        body = {"model": "smollm2", "prompt": "Hello", "max_tokens": 3}
        assert httpx.post(url + "/v1/completions", json=body).status_code == 401
        ok = httpx.post(
            url + "/v1/completions", json=body, headers={"Authorization": "Bearer sk-cli"}
        )
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        log.close()
