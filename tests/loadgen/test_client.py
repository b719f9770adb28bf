"""The streaming client against a real server with scripted timings (scripted_server.py).

Tolerances are the 5 ms the load generator promises. A busy machine can only ever add delay to
when a token arrives (late wake-ups in the server or the client), never remove it; so the
request least delayed of a few must match the script within 5 ms on every figure, and no
request may see a token before the script sends it.
"""

import statistics

import pytest

from loadgen.client import Endpoint, EndpointError, StreamClient, base_url, error_message
from loadgen.metrics import RequestRecord
from loadgen.workload import Request

MS5 = 0.005
TRIES = 6  # requests per timing check, one after another so their delays are independent


def _matches(records: list[RequestRecord], ttft: float, tpot: float) -> None:
    """TTFT, TPOT and E2E latency as scripted: first token after `ttft`, then one every `tpot`."""
    e2e = ttft + (records[0].output_len - 1) * tpot
    for r in records:  # never early, up to clock rounding
        assert r.ttft >= ttft - 0.001 and r.latency >= e2e - 0.001, (r.ttft, r.latency)
    best = min(records, key=lambda r: (r.ttft - ttft) + (r.latency - e2e))
    assert best.ttft == pytest.approx(ttft, abs=MS5)
    assert best.tpot == pytest.approx(tpot, abs=MS5)
    assert best.latency == pytest.approx(e2e, abs=MS5)
PROMPT = Request("The town stood where two rivers met and most streets ran down", 12, 8)


async def _send(url: str, model: str, request: Request = PROMPT, n: int = 1, **kw):
    async with StreamClient(Endpoint(url, model, **kw)) as client:
        return [await client.send(request) for _ in range(n)]


@pytest.mark.parametrize("kind", ["completions", "chat"])
async def test_timings_match_the_script(scripted_url: str, kind: str) -> None:
    # steady: first token 80 ms after arrival, then a token every 25 ms.
    records = await _send(scripted_url, f"steady/timing-{kind}", n=TRIES, kind=kind)
    assert all(r.success for r in records), [r.error for r in records]
    _matches(records, ttft=0.080, tpot=0.025)
    assert statistics.median(g for r in records for g in r.itl) == pytest.approx(0.025, abs=MS5)
    for r in records:
        assert r.output_len == 8 and len(r.itl) == 7
        assert r.latency == pytest.approx(r.ttft + sum(r.itl))
        # The server's usage counts the prompt's words; it wins over the workload's count.
        assert r.prompt_len == 12


async def test_request_body_asks_for_fixed_length_streams(scripted_url: str, stats) -> None:
    await _send(scripted_url, "steady/body", extra_body={"temperature": 0})
    body = stats("steady/body")["last_body"]
    assert body["prompt"] == PROMPT.prompt and body["max_tokens"] == 8
    assert body["stream"] is True and body["ignore_eos"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0
    await _send(scripted_url, "steady/chat-body", kind="chat", ignore_eos=False)
    body = stats("steady/chat-body")["last_body"]
    assert body["messages"] == [{"role": "user", "content": PROMPT.prompt}]
    assert "ignore_eos" not in body


async def test_token_id_prompts_are_sent_as_lists(scripted_url: str, stats) -> None:
    (record,) = await _send(scripted_url, "steady/ids", Request([5, 6, 7, 8], 4, 3))
    assert stats("steady/ids")["last_body"]["prompt"] == [5, 6, 7, 8]
    assert record.success and record.prompt_len == 4 and record.output_len == 3


async def test_without_usage_tokens_are_counted_from_chunks(scripted_url: str) -> None:
    records = await _send(scripted_url, "no-usage", Request("short prompt", 99, 6), n=TRIES)
    for record in records:
        assert record.success and record.output_len == 6
        assert record.prompt_len == 99  # nothing better than the workload's count
    _matches(records, ttft=0.060, tpot=0.020)


async def test_usage_wins_when_chunks_carry_several_tokens(scripted_url: str) -> None:
    # two-per-chunk: 8 tokens in 4 chunks, 20 ms apart, first after 40 ms.
    records = await _send(scripted_url, "two-per-chunk", n=TRIES)
    for record in records:
        assert record.success and record.output_len == 8 and len(record.itl) == 3
    # Seven gaps after the first token, but only three of 20 ms: TPOT is 60 ms / 7.
    _matches(records, ttft=0.040, tpot=3 * 0.020 / 7)


async def test_a_late_done_does_not_inflate_latency(scripted_url: str) -> None:
    # late-done: the last token at 60 + 7 * 20 = 200 ms, [DONE] 250 ms after it.
    records = await _send(scripted_url, "late-done", n=TRIES)
    assert all(r.success for r in records)
    _matches(records, ttft=0.060, tpot=0.020)


async def test_a_compressed_stream_is_decoded(scripted_url: str) -> None:
    (record,) = await _send(scripted_url, "gzipped")
    assert record.success and record.output_len == 8 and len(record.itl) == 7


async def test_http_errors_are_recorded_with_the_servers_message(scripted_url: str) -> None:
    (record,) = await _send(scripted_url, "overloaded")
    assert not record.success
    assert record.error == "HTTP 429: The server is overloaded, retry later."
    (record,) = await _send(scripted_url, "no-such-model")
    assert record.error == "HTTP 404: The model `no-such-model` does not exist."


async def test_an_error_inside_the_stream_fails_the_request(scripted_url: str) -> None:
    (record,) = await _send(scripted_url, "broken-stream")
    assert not record.success and record.error == "error in stream: engine died"


async def test_data_that_is_not_json_fails_the_request(scripted_url: str) -> None:
    (record,) = await _send(scripted_url, "garbage")
    assert not record.success
    assert record.error == "malformed stream from server: b'this is not json' is not a JSON object"


async def test_a_request_past_its_timeout_fails(scripted_url: str) -> None:
    (record,) = await _send(scripted_url, "stall", timeout=0.3)
    assert not record.success and record.error == "timed out after 0.3 s"


async def test_an_unreachable_server_fails_requests_without_raising(free_url: str) -> None:
    (record,) = await _send(free_url, "any")
    assert not record.success and record.error.startswith("ConnectError")


def test_base_url_accepts_the_common_spellings() -> None:
    for url in ("http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/"):
        assert base_url(url) == "http://h:8000"
    with pytest.raises(EndpointError, match="must start with http"):
        base_url("h:8000")
    with pytest.raises(EndpointError, match="unknown endpoint"):
        Endpoint("http://h", "m", kind="embeddings")


def test_error_message_reads_openai_fastapi_and_plain_bodies() -> None:
    assert error_message(b'{"error": {"message": "bad", "type": "x"}}') == "bad"
    assert error_message(b'{"object": "error", "message": "old style"}') == "old style"
    assert error_message(b'{"detail": "Not Found"}') == "Not Found"
    assert error_message(b"upstream timeout") == "upstream timeout"
    assert error_message(b"") == "(empty body)"
