"""Real worker processes against a real Redis, with real KV transfer over both backends.

A prefill and a decode worker per KV backend (tcp, ucx), and one colocated worker, each
started once per module and shared by its tests (float32, one thread, 72 KV blocks).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis
from worker_processes import (
    AUTH,
    PROMPTS,
    REPO,
    TOKEN,
    Worker,
    reference_tokens,
    sampling_json,
    start_workers,
    stop_all,
    wait_until,
)

from services.engine.llm import LLM
from services.registry import EmbeddedRedis

LEASE_SECONDS = 6  # prefill workers here free unpulled KV after this long (margin for busy CPUs)
POOL_TOKENS = 72 * 16  # --kv-cache-memory 0.05 GiB of float32 SmolLM2 blocks
CONTRACT_METRICS = (
    "num_requests_running", "num_requests_waiting", "kv_cache_usage_perc",
    "queued_prefill_tokens", "num_preemptions_total", "kv_transfer_bytes_total",
    "kv_transfer_seconds_total", "kv_transfer_failures_total", "kv_leases_active",
)  # fmt: skip


@dataclass
class Pair:
    backend: str
    prefill: Worker
    decode: Worker


@pytest.fixture(scope="module", params=["tcp", "ucx"])
def pair(request, redis_server: EmbeddedRedis, tmp_path_factory) -> Iterator[Pair]:
    backend = request.param
    prefill, decode = start_workers(
        redis_server.url,
        tmp_path_factory.mktemp(f"pair-{backend}"),
        [
            ("prefill", f"prefill-{backend}",
             ["--kv-backend", backend, "--kv-lease-seconds", str(LEASE_SECONDS)]),
            ("decode", f"decode-{backend}", ["--kv-backend", backend]),
        ],
    )  # fmt: skip
    yield Pair(backend, prefill, decode)
    stop_all(prefill, decode)


@pytest.fixture(scope="module")
def both(redis_server: EmbeddedRedis, tmp_path_factory) -> Iterator[Worker]:
    """A colocated worker that runs one sequence at a time and queues at most one more."""
    tmp = tmp_path_factory.mktemp("both")
    (worker,) = start_workers(
        redis_server.url,
        tmp,
        [("both", "both-0", ["--kv-backend", "tcp", "--max-num-seqs", "1",
                             "--max-queued-requests", "1",
                             "--step-log", str(tmp / "steps.jsonl")])],
    )  # fmt: skip
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def prompts(offline_llm: LLM) -> list[list[int]]:
    return [offline_llm.tokenizer.encode(p) for p in PROMPTS]


def prefill(worker: Worker, rid: str, prompt: list[int], max_tokens: int) -> dict:
    response = httpx.post(
        f"{worker.url}/internal/prefill",
        headers=AUTH,
        json={"request_id": rid, "prompt_token_ids": prompt, "sampling": sampling_json(max_tokens)},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()


def decode_body(rid: str, prompt: list[int], first: dict, max_tokens: int) -> dict:
    return {
        "request_id": rid,
        "prompt_token_ids": prompt,
        "output_token_ids": [first["token_id"]],
        "sampling": sampling_json(max_tokens),
        "kv_transfer_params": first["kv_transfer_params"],
    }


def stream_lines(url: str, body: dict) -> list[dict]:
    with httpx.stream("POST", url, headers=AUTH, json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"] == "application/x-ndjson"
        return [json.loads(line) for line in response.iter_lines() if line]


def tokens_of(lines: list[dict]) -> list[int]:
    return [t for line in lines for t in line["token_ids"]]


def kv_idle(worker: Worker) -> bool:
    return worker.metric("kv_cache_usage_perc") == 0 and worker.metric("kv_leases_active") == 0


# ---- prefill + decode, per backend ---------------------------------------------------------


def test_workers_register_with_their_load(pair: Pair, redis_server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(redis_server.url)
    for worker in (pair.prefill, pair.decode):
        record = json.loads(client.get(f"pdserve:worker:{worker.worker_id}"))
        assert record["role"] == worker.role and record["url"] == worker.url
        assert record["model"] == "smollm2" and record["tp_size"] == 1
        assert record["kv_backend"] == pair.backend
        assert record["load"]["free_blocks"] == record["load"]["total_blocks"] == 72
        assert 0 < client.pttl(f"pdserve:worker:{worker.worker_id}") <= 3000
        health = worker.health()
        assert health["status"] == "ok" and health["role"] == worker.role
    client.close()


def test_prefill_then_decode_equals_offline_greedy(
    pair: Pair, prompts: list[list[int]], offline_llm: LLM
) -> None:
    expected = reference_tokens(offline_llm, prompts, 8)
    for i, (prompt, want) in enumerate(zip(prompts, expected, strict=True)):
        rid = f"{pair.backend}-seq-{i}"
        first = prefill(pair.prefill, rid, prompt, 8)
        assert first["token_id"] == want[0] and first["finish_reason"] is None
        assert first["num_prompt_tokens"] == len(prompt)
        params = first["kv_transfer_params"]
        assert params["backend"] == pair.backend and params["num_tokens"] == len(prompt)
        body = decode_body(rid, prompt, first, 8)
        lines = stream_lines(f"{pair.decode.url}/internal/decode", body)
        assert [first["token_id"], *tokens_of(lines)] == want
        assert lines[-1]["finish_reason"] == "length" and lines[-1]["kv"] == "pulled"
        assert all(line["finish_reason"] is None for line in lines[:-1])
    # The KV really moved: both sides counted the bytes.
    assert pair.decode.metric("kv_transfer_bytes_total") > 0
    assert pair.prefill.metric("kv_transfer_bytes_total") > 0
    exposition = httpx.get(f"{pair.decode.url}/metrics").text
    for name in CONTRACT_METRICS:
        assert f'pdserve:{name}{{role="decode"' in exposition, name
    assert 'pdserve:step_seconds_count{phase="decode",role="decode"}' in exposition
    wait_until(lambda: kv_idle(pair.prefill) and kv_idle(pair.decode), "KV usage back to zero")


def test_a_prompt_cached_on_the_decode_side_is_not_pulled_again(
    pair: Pair, offline_llm: LLM
) -> None:
    prompt = list(range(7000, 7032))  # two whole blocks: all of it can be cached
    (want,) = reference_tokens(offline_llm, [prompt], 4)
    for attempt, kv in enumerate(("pulled", "cached")):
        rid = f"{pair.backend}-cache-{attempt}"
        first = prefill(pair.prefill, rid, prompt, 4)
        lines = stream_lines(
            f"{pair.decode.url}/internal/decode", decode_body(rid, prompt, first, 4)
        )
        assert [first["token_id"], *tokens_of(lines)] == want
        assert lines[-1]["kv"] == kv
        # Pulled or not, the decode worker handed the lease back before it streamed.
        assert pair.prefill.metric("kv_leases_active") == 0
    wait_until(lambda: kv_idle(pair.prefill) and kv_idle(pair.decode), "KV usage back to zero")


def test_logprobs_travel_with_the_tokens(pair: Pair, prompts: list[list[int]]) -> None:
    prompt, rid = prompts[0], f"{pair.backend}-logprobs"
    sampling = {**sampling_json(3), "logprobs": 2}
    body = {"request_id": rid, "prompt_token_ids": prompt, "sampling": sampling}
    first = httpx.post(f"{pair.prefill.url}/internal/prefill", headers=AUTH, json=body).json()
    assert first["logprob"]["token_id"] == first["token_id"]
    assert first["logprob"]["logprob"] <= 0 and len(first["logprob"]["top"]) == 2
    decode = {**decode_body(rid, prompt, first, 3), "sampling": sampling}
    lines = stream_lines(f"{pair.decode.url}/internal/decode", decode)
    for line in lines:
        (logprob,) = line["logprobs"]
        assert logprob["token_id"] == line["token_ids"][0] and len(logprob["top"]) == 2
        # Greedy: the chosen token is the most likely one.
        assert logprob["top"][0][0] == logprob["token_id"]


async def test_concurrent_requests_equal_offline_greedy(
    pair: Pair, prompts: list[list[int]], offline_llm: LLM
) -> None:
    expected = reference_tokens(offline_llm, prompts, 6)

    async def one(client: httpx.AsyncClient, i: int, prompt: list[int]) -> list[int]:
        rid = f"{pair.backend}-conc-{i}"
        body = {"request_id": rid, "prompt_token_ids": prompt, "sampling": sampling_json(6)}
        first = (await client.post(f"{pair.prefill.url}/internal/prefill", json=body)).json()
        tokens = [first["token_id"]]
        decode = decode_body(rid, prompt, first, 6)
        async with client.stream("POST", f"{pair.decode.url}/internal/decode", json=decode) as r:
            async for line in r.aiter_lines():
                if line:
                    tokens += json.loads(line)["token_ids"]
        return tokens

    async with httpx.AsyncClient(headers=AUTH, timeout=60) as client:
        got = await asyncio.gather(*(one(client, i, p) for i, p in enumerate(prompts)))
    assert got == expected


def test_abort_frees_blocks_on_both_sides(pair: Pair, prompts: list[list[int]]) -> None:
    long_prompt = prompts[3]
    # A prompt held on the prefill worker under a lease, then aborted there.
    prefill(pair.prefill, f"{pair.backend}-held", long_prompt, 300)
    assert pair.prefill.metric("kv_cache_usage_perc") > 0
    assert pair.prefill.metric("kv_leases_active") == 1
    held = {"request_id": f"{pair.backend}-held"}
    aborted = httpx.post(f"{pair.prefill.url}/internal/abort", headers=AUTH, json=held)
    assert aborted.json() == {"aborted": True}
    wait_until(lambda: kv_idle(pair.prefill), "the aborted prompt's blocks on the prefill side")

    # A decode stream whose client goes away: the worker aborts the request.
    rid = f"{pair.backend}-gone"
    first = prefill(pair.prefill, rid, long_prompt, 300)
    body = decode_body(rid, long_prompt, first, 300)
    with httpx.stream("POST", f"{pair.decode.url}/internal/decode", headers=AUTH, json=body) as r:
        lines = r.iter_lines()
        next(lines), next(lines)
        assert pair.decode.metric("num_requests_running") == 1
    wait_until(lambda: kv_idle(pair.decode), "the disconnected request's blocks on the decode side")
    assert pair.decode.metric("num_requests_running") == 0

    # /internal/abort on the decode worker ends its stream with finish_reason "abort".
    rid = f"{pair.backend}-abort"
    first = prefill(pair.prefill, rid, long_prompt, 300)
    body = decode_body(rid, long_prompt, first, 300)
    with httpx.stream("POST", f"{pair.decode.url}/internal/decode", headers=AUTH, json=body) as r:
        lines = r.iter_lines()
        next(lines)
        answer = httpx.post(
            f"{pair.decode.url}/internal/abort", headers=AUTH, json={"request_id": rid}
        )
        assert answer.json() == {"aborted": True}
        rest = [json.loads(line) for line in lines if line]
    assert rest[-1]["finish_reason"] == "abort"
    wait_until(lambda: kv_idle(pair.decode) and kv_idle(pair.prefill), "KV usage back to zero")


def test_a_lease_never_pulled_expires_then_decode_recomputes(
    pair: Pair, prompts: list[list[int]], offline_llm: LLM
) -> None:
    prompt = prompts[1]
    (want,) = reference_tokens(offline_llm, [prompt], 5)
    rid = f"{pair.backend}-expired"
    first = prefill(pair.prefill, rid, prompt, 5)
    assert pair.prefill.metric("kv_leases_active") == 1
    wait_until(lambda: kv_idle(pair.prefill), "the lease to expire", timeout=LEASE_SECONDS + 30)
    lines = stream_lines(f"{pair.decode.url}/internal/decode", decode_body(rid, prompt, first, 5))
    assert [first["token_id"], *tokens_of(lines)] == want
    assert lines[-1]["kv"] == "recomputed"
    wait_until(lambda: kv_idle(pair.decode), "decode KV usage back to zero")


def test_internal_endpoints_need_the_token(pair: Pair) -> None:
    body = {"request_id": "x", "prompt_token_ids": [1, 2, 3]}
    for worker, path in (
        (pair.prefill, "/internal/prefill"),
        (pair.decode, "/internal/decode"),
        (pair.decode, "/internal/abort"),
    ):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            # Even a malformed body gets a 401 first: nothing is parsed before the token.
            for content in (json.dumps(body), "{not json"):
                response = httpx.post(f"{worker.url}{path}", headers=headers, content=content)
                assert response.status_code == 401, (path, headers, response.text)
                error = response.json()["error"]
                assert error["type"] == "authentication_error" and "token" in error["message"]
    assert httpx.get(f"{pair.decode.url}/health").status_code == 200
    assert httpx.get(f"{pair.decode.url}/metrics").status_code == 200


@pytest.mark.parametrize(
    ("path", "content", "fragment"),
    [
        ("/internal/prefill", "{not json", "not valid JSON"),
        ("/internal/prefill", {"request_id": "b", "prompt_token_ids": "1 2 3"}, "prompt_token_ids"),
        ("/internal/prefill", {"request_id": "b", "prompt_token_ids": [1.5]}, "prompt_token_ids"),
        ("/internal/prefill", {"request_id": 7, "prompt_token_ids": [1]}, "request_id"),
        ("/internal/prefill", {"request_id": "b", "prompt_token_ids": []}, "prompt_token_ids"),
        ("/internal/prefill",
         {"request_id": "b", "prompt_token_ids": [1], "sampling": {"max_tokens": "5"}},
         "sampling.max_tokens"),
        ("/internal/prefill",
         {"request_id": "b", "prompt_token_ids": [1], "sampling": {"max_tokens": -3}},
         "max_tokens must be an integer >= 1"),
        ("/internal/prefill",
         {"request_id": "b", "prompt_token_ids": [1], "sampling": {"top_p": 7}}, "top_p"),
        ("/internal/prefill",
         {"request_id": "b", "prompt_token_ids": [1], "sampling": {"n": 2}}, "sampling.n"),
        ("/internal/prefill", {"request_id": "b", "prompt_token_ids": [99999999]}, "vocabulary"),
        ("/internal/prefill",
         {"request_id": "b", "prompt_token_ids": [5] * (POOL_TOKENS + 10)}, "KV cache"),
        ("/internal/decode",
         {"request_id": "b", "prompt_token_ids": [1, 2], "output_token_ids": []},
         "output_token_ids"),
        ("/internal/decode",
         {"request_id": "b", "prompt_token_ids": [1, 2], "output_token_ids": [3],
          "kv_transfer_params": {"backend": "carrier-pigeon"}}, "kv_transfer_params"),
        ("/internal/decode",
         {"request_id": "b", "prompt_token_ids": [1, 2], "output_token_ids": [3, 4],
          "sampling": {"max_tokens": 2}}, "max_tokens"),
    ],
)  # fmt: skip
def test_bad_requests_get_a_400_naming_the_problem(
    pair: Pair, path: str, content: object, fragment: str
) -> None:
    worker = pair.prefill if path == "/internal/prefill" else pair.decode
    raw = content if isinstance(content, str) else json.dumps(content)
    headers = {**AUTH, "Content-Type": "application/json"}
    response = httpx.post(f"{worker.url}{path}", headers=headers, content=raw)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert fragment in error["message"] and error["type"] == "invalid_request_error"


def test_each_role_serves_only_its_own_routes(pair: Pair) -> None:
    body = {"request_id": "r", "prompt_token_ids": [1, 2], "output_token_ids": [3]}
    response = httpx.post(f"{pair.prefill.url}/internal/decode", headers=AUTH, json=body)
    assert response.status_code == 404
    assert "prefill worker" in response.json()["error"]["message"]
    body = {"request_id": "r", "prompt_token_ids": [1, 2]}
    response = httpx.post(f"{pair.decode.url}/internal/prefill", headers=AUTH, json=body)
    assert response.status_code == 404


# ---- the colocated worker ----------------------------------------------------------------


def test_generate_streams_the_offline_greedy_tokens(
    both: Worker, prompts: list[list[int]], offline_llm: LLM
) -> None:
    expected = reference_tokens(offline_llm, prompts[:2], 7)
    for i, (prompt, want) in enumerate(zip(prompts[:2], expected, strict=True)):
        body = {"request_id": f"gen-{i}", "prompt_token_ids": prompt, "sampling": sampling_json(7)}
        lines = stream_lines(f"{both.url}/internal/generate", body)
        assert tokens_of(lines) == want
        assert lines[-1]["finish_reason"] == "length"


def test_the_step_log_records_each_step_of_a_request(
    both: Worker, prompts: list[list[int]]
) -> None:
    log = both.log_path.parent / "steps.jsonl"
    before = len(log.read_text().splitlines()) if log.exists() else 0
    body = {"request_id": "logged", "prompt_token_ids": prompts[2], "sampling": sampling_json(5)}
    assert len(tokens_of(stream_lines(f"{both.url}/internal/generate", body))) == 5
    steps = [json.loads(line) for line in log.read_text().splitlines()[before:]]
    # One sequence at a time: the prompt's step samples the first token, four decode steps
    # of batch 1 sample the rest.
    assert [s["prefill_tokens"] > 0 for s in steps] == [True, False, False, False, False], steps
    assert [s["decode_tokens"] for s in steps] == [0, 1, 1, 1, 1], steps
    assert all(s["seconds"] > 0 and s["end"] > 0 for s in steps), steps


async def test_a_full_queue_answers_429_with_retry_after(
    both: Worker, prompts: list[list[int]], offline_llm: LLM
) -> None:
    """One running (max-num-seqs 1) plus one waiting fill the queue (max-queued-requests 1)."""
    (want,) = reference_tokens(offline_llm, [prompts[2]], 3)

    def body(rid: str, prompt: list[int], max_tokens: int) -> dict:
        sampling = sampling_json(max_tokens)
        return {"request_id": rid, "prompt_token_ids": prompt, "sampling": sampling}

    url = f"{both.url}/internal/generate"
    async with httpx.AsyncClient(headers=AUTH, timeout=60) as client:
        async with client.stream("POST", url, json=body("running", prompts[0], 1000)) as running:
            lines = running.aiter_lines()
            await anext(lines)
            waiting = asyncio.create_task(client.post(url, json=body("waiting", prompts[2], 3)))
            await asyncio.to_thread(
                wait_until, lambda: both.metric("num_requests_waiting") == 1, "a waiting request"
            )
            rejected = await client.post(url, json=body("rejected", prompts[1], 3))
            assert rejected.status_code == 429
            assert int(rejected.headers["Retry-After"]) >= 1
            error = rejected.json()["error"]
            assert error["type"] == "rate_limit_error" and "queue is full" in error["message"]
        # Leaving the running stream aborts it, so the waiting request gets its turn.
        done = await waiting
    assert done.status_code == 200
    assert [t for line in done.text.splitlines() for t in json.loads(line)["token_ids"]] == want
    await asyncio.to_thread(wait_until, lambda: kv_idle(both), "KV usage back to zero")


def test_sigterm_leaves_the_registry_at_once_and_exits_zero(
    both: Worker, redis_server: EmbeddedRedis
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    key = f"pdserve:worker:{both.worker_id}"
    assert client.exists(key)
    assert both.stop() == 0, both.log()
    assert not client.exists(key)  # deregistered, not left to expire
    client.close()


def test_a_worker_that_cannot_start_exits_with_its_error(redis_server: EmbeddedRedis) -> None:
    def launch(args: list[str], token: str | None = TOKEN) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if k != "PDSERVE_INTERNAL_TOKEN"}
        if token:
            env["PDSERVE_INTERNAL_TOKEN"] = token
        return subprocess.Popen(
            [sys.executable, "-m", "services.cli", *args], cwd=REPO, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    base = ["--host", "127.0.0.1", "--port", "0", "--registry", redis_server.url]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        runs = {
            "missing model": launch(["prefill", *base, "--model", "/no/such/model"]),
            "busy port": launch(["decode", "--host", "127.0.0.1", "--port", str(port)]),
            "no token": launch(["worker", "--role", "both", *base], token=None),
            "tp": launch(["worker", "--role", "decode", "--tensor-parallel-size", "2", *base]),
            "step log": launch(["decode", *base, "--step-log", "/no/such/dir/steps.jsonl"]),
        }
        stderrs = {name: p.communicate(timeout=120)[1] for name, p in runs.items()}
        results = {name: (runs[name].returncode, err) for name, err in stderrs.items()}

    code, stderr = results["missing model"]
    assert code == 1 and "pdserve prefill: error:" in stderr and "/no/such/model" in stderr
    assert "Traceback" not in stderr
    code, stderr = results["busy port"]
    assert code == 1 and f"cannot listen on 127.0.0.1:{port}" in stderr
    code, stderr = results["no token"]
    assert code == 2 and "PDSERVE_INTERNAL_TOKEN" in stderr
    code, stderr = results["tp"]  # SmolLM2's 9 heads do not split over 2 ranks
    assert code == 1 and "tensor-parallel size 2 does not fit smollm2" in stderr
    assert "9 attention heads" in stderr and "Traceback" not in stderr
    code, stderr = results["step log"]
    assert code == 1 and "cannot write the step log /no/such/dir/steps.jsonl" in stderr
    assert "Traceback" not in stderr


# ---- last per backend: the prefill worker dies -----------------------------------------------


def test_a_dead_prefill_worker_means_recompute_and_it_leaves_the_registry(
    pair: Pair, prompts: list[list[int]], offline_llm: LLM, redis_server: EmbeddedRedis
) -> None:
    prompt = prompts[3]
    (want,) = reference_tokens(offline_llm, [prompt], 5)
    rid = f"{pair.backend}-orphan"
    first = prefill(pair.prefill, rid, prompt, 5)
    pair.prefill.kill()
    client = redis.Redis.from_url(redis_server.url)
    key = f"pdserve:worker:{pair.prefill.worker_id}"
    assert client.exists(key)  # a killed worker cannot deregister: its record lingers...
    failures = pair.decode.metric("kv_transfer_failures_total")
    lines = stream_lines(f"{pair.decode.url}/internal/decode", decode_body(rid, prompt, first, 5))
    assert [first["token_id"], *tokens_of(lines)] == want
    assert lines[-1]["kv"] == "recomputed"
    assert pair.decode.metric("kv_transfer_failures_total") == failures + 1

    # ...until its TTL (3 s) runs out.
    wait_until(lambda: not client.exists(key), "the killed worker's record to expire", 15)
    assert client.exists(f"pdserve:worker:{pair.decode.worker_id}")  # the live one stays
    client.close()
    assert pair.prefill.proc.returncode == -signal.SIGKILL
