"""The bodies of the internal worker API (see the contracts): typed, strict, unknown keys refused.

Strict types mean ``"max_tokens": "5"`` or ``"prompt_token_ids": [1.5]`` is a 400, not a
silent conversion; the engine's own checks (``SamplingParams``, prompt length) then run once.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from services.engine.sampler import TokenLogprobs
from services.engine.sampling_params import SamplingParams

RequestId = Annotated[str, Field(min_length=1, max_length=256)]
TokenIds = Annotated[list[int], Field(min_length=1)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Sampling(_Body):
    """How to sample; ``max_tokens`` is the whole output budget, tokens already made included."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_token_ids: list[int] = Field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None

    def to_params(self) -> SamplingParams:
        """The engine's parameters; raises InvalidRequestError for out-of-range values."""
        return SamplingParams(**self.model_dump())


class PrefillRequest(_Body):
    request_id: RequestId
    prompt_token_ids: TokenIds
    sampling: Sampling = Field(default_factory=Sampling)


GenerateRequest = PrefillRequest  # role both: the same body, answered with a token stream


class DecodeRequest(_Body):
    request_id: RequestId
    prompt_token_ids: TokenIds
    output_token_ids: TokenIds  # tokens generated so far (at least the prefill's first one)
    sampling: Sampling = Field(default_factory=Sampling)
    kv_transfer_params: dict[str, Any] | None = None  # None: recompute the prompt here


class AbortRequest(_Body):
    request_id: RequestId


def logprob_json(logprob: TokenLogprobs | None) -> dict[str, Any] | None:
    """One token's logprobs as the internal API sends them."""
    if logprob is None:
        return None
    return {
        "token_id": logprob.token_id,
        "logprob": logprob.logprob,
        "top": [[token_id, value] for token_id, value in logprob.top],
    }
