"""The router's non-generation surface: API keys, /v1/models, /health, /metrics, unknown paths."""

from __future__ import annotations

import asyncio
import socket
import sys
import time

import httpx
import openai
import pytest

from services.registry import InMemoryRegistry, WorkerLoad, WorkerRecord
from services.router.api_keys import APIKeyError, APIKeys

KEY = "sk-test-router-key"


def worker(worker_id: str, role: str, model: str = "smollm2") -> WorkerRecord:
    now = time.time()
    return WorkerRecord(
        worker_id=worker_id,
        role=role,
        url="http://127.0.0.1:9",
        model=model,
        tp_size=1,
        kv_backend="tcp",
        started_at=now,
        load=WorkerLoad(total_blocks=10, free_blocks=10),
        updated_at=now,
    )


@pytest.fixture(scope="module")
def registry() -> InMemoryRegistry:
    return InMemoryRegistry(ttl=3600)


@pytest.fixture(scope="module")
def router(start_router, registry):
    return start_router(registry=registry, api_keys=[KEY])


def test_a_bad_or_missing_api_key_gets_401(router):
    body = {"model": "smollm2", "prompt": "Hi"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        response = httpx.post(router.url + "/v1/completions", json=body, headers=headers)
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["type"] == "authentication_error"
        assert "API key" in error["message"]
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_models_lists_the_served_name(router):
    client = openai.OpenAI(base_url=router.url + "/v1", api_key=KEY, max_retries=0)
    models = client.models.list()
    assert [m.id for m in models.data] == ["smollm2"]
    assert models.data[0].max_model_len == 8192


def test_health_needs_a_prefill_and_a_decode_or_a_both_worker(router, registry):
    def health() -> httpx.Response:
        return httpx.get(router.url + "/health")

    response = health()
    assert response.status_code == 503
    assert "prefill or decode" in response.json()["reason"]
    router.call(registry.register(worker("p", "prefill")))
    router.call(registry.register(worker("d-other", "decode", model="another-model")))
    response = health()
    assert response.status_code == 503
    assert "no live decode worker" in response.json()["reason"]
    router.call(registry.register(worker("d", "decode")))
    assert health().status_code == 200
    assert health().json()["workers"] == {"prefill": 1, "decode": 1, "both": 0}
    router.call(registry.deregister("p"))
    router.call(registry.deregister("d"))
    router.call(registry.register(worker("b", "both")))
    assert health().status_code == 200
    router.call(registry.deregister("b"))
    assert health().status_code == 503


def test_health_reports_an_unreachable_registry(start_router, tokenizer):
    from services.registry import RedisRegistry

    dead = start_router(registry=RedisRegistry("redis://127.0.0.1:9/0", timeout=0.5))
    response = httpx.get(dead.url + "/health")
    assert response.status_code == 503
    assert "cannot read the registry" in response.json()["reason"]


def test_metrics_expose_the_contract_names(router):
    text = httpx.get(router.url + "/metrics").text
    for name in (
        "pdserve:time_to_first_token_seconds_bucket",
        "pdserve:inter_token_latency_seconds_bucket",
        "pdserve:time_per_output_token_seconds_bucket",
        "pdserve:e2e_request_latency_seconds_bucket",
        'pdserve:requests_total{outcome="ok"}',
        'pdserve:requests_total{outcome="aborted"}',
        "pdserve:prompt_tokens_total",
        "pdserve:generation_tokens_total",
        "pdserve:requests_running",
    ):
        assert name in text, name


def test_unknown_paths_and_internal_endpoints_are_not_served(router):
    for path in ("/internal/prefill", "/internal/abort", "/v2/completions"):
        response = httpx.post(router.url + path, json={})
        assert response.status_code == 404
        assert "no endpoint" in response.json()["error"]["message"]
    response = httpx.get(router.url + "/v1/chat/completions")
    assert response.status_code == 405
    assert response.json()["error"]["message"].startswith("GET is not allowed")


def test_api_keys_come_from_flag_file_and_environment(tmp_path, monkeypatch):
    key_file = tmp_path / "keys"
    key_file.write_text("# operators\nfrom-file\n\n")
    monkeypatch.setenv("PDSERVE_API_KEYS", "env-a, env-b")
    keys = APIKeys.load(["from-flag"], str(key_file))
    for key in ("from-flag", "from-file", "env-a", "env-b"):
        keys.check(f"Bearer {key}")
    monkeypatch.delenv("PDSERVE_API_KEYS")
    assert not APIKeys.load().enabled
    APIKeys.load().check(None)  # no keys configured: the API is open
    with pytest.raises(APIKeyError, match="cannot read API key file"):
        APIKeys.load(key_file=str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(APIKeyError, match="holds no key"):
        APIKeys.load(key_file=str(tmp_path / "empty"))


def test_router_cli_rejects_bad_input_in_one_line(tmp_path, monkeypatch):
    async def run(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "router", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
        return proc.returncode or 0, err.decode()

    monkeypatch.delenv("PDSERVE_INTERNAL_TOKEN", raising=False)
    code, err = asyncio.run(run())
    assert code == 2 and "PDSERVE_INTERNAL_TOKEN is not set" in err and "Traceback" not in err
    monkeypatch.setenv("PDSERVE_INTERNAL_TOKEN", "some-token")
    code, err = asyncio.run(run("--max-queued-requests", "0"))
    assert code == 2 and "must be positive" in err
    code, err = asyncio.run(run("--registry", "memcached://x"))
    assert code == 2 and "unknown registry" in err and "Traceback" not in err
    code, err = asyncio.run(run("--api-key-file", str(tmp_path / "nope")))
    assert code == 2 and "cannot read API key file" in err and "Traceback" not in err
    code, err = asyncio.run(run("--model", str(tmp_path / "no-model")))
    assert code == 2 and "not found" in err and "Traceback" not in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        code, err = asyncio.run(run("--host", "127.0.0.1", "--port", port))
    assert code == 1 and "cannot listen on" in err and "Traceback" not in err
