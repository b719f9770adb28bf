"""One request's state inside the engine: its tokens, its blocks, how far it has been computed."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch

from services.engine.sampling_params import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"  # queued, holds no blocks
    WAITING_FOR_KV = "waiting_for_kv"  # blocks allocated, KV being pulled from a prefill worker
    RUNNING = "running"
    HELD = "held"  # prefill role: done, blocks kept for a decode worker to pull
    FINISHED = "finished"


class FinishReason(enum.StrEnum):
    STOP = "stop"  # EOS or stop token
    LENGTH = "length"  # max_tokens or context full
    ABORT = "abort"
    PREFILL_DONE = "prefill_done"  # prefill role: first token sampled, KV ready to ship


@dataclass
class Sequence:
    """A request as the scheduler and runner see it.

    `token_ids` is prompt + generated tokens. Tokens [0, num_computed) have KV in `block_ids`;
    the next step computes some of [num_computed, len(token_ids)) and, when it reaches the end,
    samples one more token.
    """

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    arrival: float
    token_ids: list[int] = field(default_factory=list)
    block_ids: list[int] = field(default_factory=list)
    num_computed: int = 0
    num_cached: int = 0  # prompt tokens whose KV came from the prefix cache at admission
    num_hashed_blocks: int = 0  # leading full blocks registered in the prefix cache
    status: Status = Status.WAITING
    finish_reason: FinishReason | None = None
    kv_source: dict[str, Any] | None = None  # decode role: where to pull the prompt's KV from
    generator: torch.Generator | None = None
    num_preemptions: int = 0

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.prompt_ids)

    @property
    def num_prompt(self) -> int:
        return len(self.prompt_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt :]

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed
