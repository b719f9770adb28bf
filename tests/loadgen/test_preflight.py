"""Checks before a run: reachability, the model, extensions the server rejects."""

import pytest

from loadgen.client import Endpoint
from loadgen.preflight import PreflightError, check, served_models


async def test_models_are_listed(scripted_url: str) -> None:
    models = await served_models(Endpoint(scripted_url, ""))
    assert models[0] == "steady" and "busy" in models


async def test_the_first_listed_model_is_used_when_none_is_given(scripted_url: str) -> None:
    checked = await check(Endpoint(scripted_url, ""))
    assert checked.endpoint.model == "steady"
    assert checked.endpoint.ignore_eos and checked.endpoint.include_usage
    assert checked.notes == ["benchmarking model 'steady' (the first the server lists)"]


async def test_a_server_that_rejects_ignore_eos_gets_requests_without_it(scripted_url: str):
    checked = await check(Endpoint(scripted_url, "strict", kind="chat"))
    assert not checked.endpoint.ignore_eos
    assert checked.notes == ["server rejects ignore_eos: outputs may stop before --output-len"]


async def test_an_unreachable_server_is_named(free_url: str) -> None:
    with pytest.raises(PreflightError, match=f"cannot reach {free_url}"):
        await check(Endpoint(free_url, "m"))


async def test_a_rejected_test_request_carries_the_servers_reason(scripted_url: str) -> None:
    with pytest.raises(PreflightError, match="HTTP 404: The model `nope` does not exist"):
        await check(Endpoint(scripted_url, "nope"))
    with pytest.raises(PreflightError, match="HTTP 429"):
        await check(Endpoint(scripted_url, "overloaded"))
