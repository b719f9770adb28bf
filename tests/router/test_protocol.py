"""Every malformed or unsupported request gets a 4xx in OpenAI's error shape naming the problem.

No worker is needed: the router refuses these before it looks for one.
"""

from __future__ import annotations

import httpx
import openai
import pytest

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
MAX_MODEL_LEN = 64
BODY_LIMIT = 4096


@pytest.fixture(scope="module")
def router(start_router):
    return start_router(max_model_len=MAX_MODEL_LEN, max_body_bytes=BODY_LIMIT)


def completion(**fields):
    return {"model": "smollm2", "prompt": "Hello", "max_tokens": 4} | fields


def chat(**fields):
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    return body | fields


CASES = [
    # (name, path, body (dict or raw bytes), status, param, words in the message)
    (
        "malformed json",
        COMPLETIONS,
        b'{"model": "smollm2", "prompt": ',
        400,
        None,
        "not valid JSON",
    ),
    ("empty body", COMPLETIONS, b"", 400, None, "body is empty"),
    ("not an object", CHAT, b"[1, 2]", 400, None, "JSON object"),
    ("missing model", COMPLETIONS, {"prompt": "Hi"}, 400, "model", "required"),
    ("missing prompt", COMPLETIONS, {"model": "smollm2"}, 400, "prompt", "required"),
    ("missing messages", CHAT, {"model": "smollm2"}, 400, "messages", "required"),
    (
        "max_tokens as string",
        COMPLETIONS,
        completion(max_tokens="10"),
        400,
        "max_tokens",
        "integer",
    ),
    ("temperature as string", CHAT, chat(temperature="hot"), 400, "temperature", "number"),
    ("stream as string", CHAT, chat(stream="yes"), 400, "stream", "boolean"),
    ("prompt as number", COMPLETIONS, completion(prompt=5), 400, "prompt", "valid"),
    ("stop as number", COMPLETIONS, completion(stop=5), 400, "stop", "valid"),
    (
        "negative max_tokens",
        COMPLETIONS,
        completion(max_tokens=-1),
        400,
        "max_tokens",
        "greater than or equal to 1",
    ),
    ("zero max_tokens", CHAT, chat(max_tokens=0), 400, "max_tokens", "greater than or equal to 1"),
    (
        "negative max_completion_tokens",
        CHAT,
        chat(max_completion_tokens=-5),
        400,
        "max_completion_tokens",
        "greater than or equal to 1",
    ),
    (
        "negative temperature",
        CHAT,
        chat(temperature=-0.5),
        400,
        "temperature",
        "greater than or equal to 0",
    ),
    ("top_p above one", CHAT, chat(top_p=1.5), 400, "top_p", "less than or equal to 1"),
    (
        "too many logprobs",
        COMPLETIONS,
        completion(logprobs=21),
        400,
        "logprobs",
        "less than or equal to 20",
    ),
    ("top_logprobs alone", CHAT, chat(top_logprobs=2), 400, "top_logprobs", "logprobs"),
    ("empty messages", CHAT, chat(messages=[]), 400, "messages", "at least 1"),
    (
        "unknown role",
        CHAT,
        chat(messages=[{"role": "wizard", "content": "hi"}]),
        400,
        "messages.0.role",
        "system",
    ),
    (
        "image content",
        CHAT,
        chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
        400,
        "messages.0.content",
        "image_url",
    ),
    ("unknown model", CHAT, chat(model="gpt-4o"), 400, "model", "does not exist"),
    ("n above one", CHAT, chat(n=2), 400, "n", "n > 1"),
    (
        "tools",
        CHAT,
        chat(tools=[{"type": "function", "function": {"name": "f"}}]),
        400,
        "tools",
        "tools",
    ),
    ("tool_choice", CHAT, chat(tool_choice="required"), 400, "tool_choice", "not supported"),
    ("best_of", COMPLETIONS, completion(best_of=3), 400, "best_of", "not supported"),
    ("echo", COMPLETIONS, completion(echo=True), 400, "echo", "not supported"),
    ("several prompts", COMPLETIONS, completion(prompt=["a", "b"]), 400, "prompt", "one request"),
    ("empty prompt", COMPLETIONS, completion(prompt=""), 400, "prompt", "empty"),
    (
        "token out of vocabulary",
        COMPLETIONS,
        completion(prompt=[1, 10**6]),
        400,
        "prompt",
        "outside the vocabulary",
    ),
    (
        "stream_options without stream",
        CHAT,
        chat(stream_options={"include_usage": True}),
        400,
        "stream_options",
        "stream",
    ),
    (
        "prompt over max-model-len",
        COMPLETIONS,
        completion(prompt="word " * 100),
        400,
        "prompt",
        "maximum context length",
    ),
    (
        "prompt + max_tokens over max-model-len",
        CHAT,
        chat(max_tokens=MAX_MODEL_LEN),
        400,
        "max_tokens",
        "maximum context length",
    ),
    (
        "body over the size limit",
        COMPLETIONS,
        completion(prompt="x" * BODY_LIMIT),
        413,
        None,
        "exceeds",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "param", "words"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_request_gets_a_4xx_naming_the_problem(router, path, body, status, param, words):
    if isinstance(body, dict):
        response = httpx.post(router.url + path, json=body)
    else:
        response = httpx.post(
            router.url + path, content=body, headers={"content-type": "application/json"}
        )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert words.lower() in error["message"].lower(), error["message"]
    if param:
        assert param.split(".")[0] in error["message"]


def test_openai_client_sees_unsupported_features_as_bad_requests(router):
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Hi"}], n=2
        )
    assert info.value.status_code == 400
    assert "n > 1" in info.value.message
    with pytest.raises(openai.BadRequestError, match="does not exist"):
        client.completions.create(model="llama-70b", prompt="Hi")


def test_a_valid_request_without_workers_gets_503_with_retry_after(router):
    response = httpx.post(router.url + CHAT, json=chat())
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["error"]["code"] == "no_worker_available"
    assert "prefill" in response.json()["error"]["message"]


def test_rejections_are_counted_in_metrics(router):
    before = _rejected(router)
    httpx.post(router.url + CHAT, json=chat(n=3))
    assert _rejected(router) == before + 1


def _rejected(router) -> float:
    text = httpx.get(router.url + "/metrics").text
    line = next(
        ln
        for ln in text.splitlines()
        if ln.startswith('pdserve:requests_total{outcome="rejected"}')
    )
    return float(line.split()[-1])
