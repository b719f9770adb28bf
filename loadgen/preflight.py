"""Before a benchmark: is the server there, which model does it serve, which extensions does it
accept? One streamed test request answers all three, so a run never starts against a server
that would fail every request."""

from __future__ import annotations

from dataclasses import dataclass, replace

import httpx

from loadgen.client import Endpoint, StreamClient, error_message
from loadgen.workload import Request

# A short prompt any model can answer; it checks the endpoint, not the workload.
PROBE = Request("The town stood where two rivers met, and", prompt_len=9, output_len=4)


class PreflightError(Exception):
    """The server cannot be benchmarked as asked: unreachable, no model, or rejecting requests."""


@dataclass(frozen=True)
class Checked:
    """The endpoint to benchmark with, and notes on what had to be changed for this server."""

    endpoint: Endpoint
    notes: list[str]


async def served_models(endpoint: Endpoint, timeout: float = 10.0) -> list[str]:
    """Model ids from `GET /v1/models`; raises PreflightError if the server cannot be reached."""
    headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
    try:
        async with httpx.AsyncClient(timeout=timeout) as http:
            response = await http.get(endpoint.base_url + "/v1/models", headers=headers)
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        raise PreflightError(f"cannot reach {endpoint.base_url}: {reason}") from exc
    if response.status_code in (401, 403):
        raise PreflightError(
            f"{endpoint.base_url} refused access (HTTP {response.status_code}: "
            f"{error_message(response.content)}); pass --api-key"
        )
    if response.status_code != 200:
        return []
    try:
        return [str(m["id"]) for m in response.json().get("data", [])]
    except (ValueError, TypeError, KeyError, AttributeError):
        return []


async def check(endpoint: Endpoint) -> Checked:
    """Reach the server, fill in the model if none was given, and send one streamed request,
    turning off `ignore_eos` or `stream_options` if the server rejects them by name."""
    notes: list[str] = []
    models = await served_models(endpoint)
    if not endpoint.model:
        if not models:
            raise PreflightError(f"{endpoint.base_url}/v1/models lists no model; pass --model")
        endpoint = replace(endpoint, model=models[0])
        notes.append(f"benchmarking model {models[0]!r} (the first the server lists)")
    while True:
        async with StreamClient(endpoint) as client:
            record = await client.send(PROBE)
        if record.success:
            return Checked(endpoint, notes)
        rejected = record.error.startswith(("HTTP 400", "HTTP 422"))
        if rejected and endpoint.ignore_eos and "ignore_eos" in record.error:
            endpoint = replace(endpoint, ignore_eos=False)
            notes.append("server rejects ignore_eos: outputs may stop before --output-len")
        elif rejected and endpoint.include_usage and "stream_options" in record.error:
            endpoint = replace(endpoint, include_usage=False)
            notes.append("server rejects stream_options: output tokens are counted from chunks")
        else:
            raise PreflightError(
                f"test request to {endpoint.base_url}{endpoint.path} failed: {record.error}"
            )
