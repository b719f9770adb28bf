"""The serving profile reads steady traffic, not the lockstep first round of a closed loop."""

from __future__ import annotations

import pytest

from services.serving_profile import ServingProfileError, _point


def _request(send: float, ttft: float, tpot: float | None) -> dict:
    return {"send_time": send, "ttft": ttft, "tpot": tpot}


def test_the_first_round_of_a_closed_loop_is_not_counted():
    # Concurrency 2: the first two requests start together (prefill back to back, decode in
    # lockstep); only the drifted-apart later rounds show the steady per-token time.
    requests = [_request(0.0, 0.30, 0.020), _request(0.0, 0.40, 0.021)]
    requests += [_request(1.0 + i, 0.10, 0.030 + 0.001 * i) for i in range(5)]
    requests.append(_request(6.0, 0.12, None))  # a one-token answer has no TPOT
    point = _point({"failed": 0, "requests": requests}, 2, 128, "http://x")
    assert point.tpot_ms == pytest.approx(32.0)
    assert point.ttft_ms == pytest.approx(100.0)


def test_failed_requests_make_the_point_an_error():
    result = {"failed": 1, "num_prompts": 8, "error_counts": {"HTTP 500": 1}, "requests": []}
    with pytest.raises(ServingProfileError, match="1 of 8 requests failed at concurrency 4"):
        _point(result, 4, 128, "http://x")
