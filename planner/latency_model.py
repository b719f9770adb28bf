"""The one interface every latency model implements, and how a mixed batch is timed.

A latency model turns a parallel configuration (tensor degree `tp`, pipeline degree `pp`) into a
`StepTiming`: the wall time of one engine step of that instance, in milliseconds.

- `prefill_ms(S, S2)`: one prefill batch through all pipeline stages, where `S` is the number of
  prompt tokens in the batch and `S2` the attention work in squared tokens (the sum of squared
  prompt lengths; for a chunk of `l` tokens after `o` already-prefilled ones, `(o+l)^2 - o^2`).
  With pipeline parallelism the next batch may enter after `prefill_ms / pp`.
- `decode_ms(B, T)`: one decode round in which each of `B` running sequences holding `T` context
  tokens in total gets one new token. With `pp` stages the batch is split into `pp` micro-batches
  that fill the pipeline, so the round time is also each sequence's time per output token.
"""

from __future__ import annotations

from typing import Protocol


class StepTiming(Protocol):
    def prefill_ms(self, tokens: float, sq_tokens: float) -> float: ...

    def decode_ms(self, batch: int, context_tokens: float) -> float: ...


class LatencyModel(Protocol):
    name: str

    def unsupported(self, tp: int, pp: int) -> str | None:
        """Why this model cannot time (tp, pp), or None when it can."""
        ...

    def timing(self, tp: int, pp: int) -> StepTiming: ...

    def describe(self) -> dict:
        """A JSON-able description from which `latency_model_from_description` rebuilds it."""
        ...


def mixed_ms(timing: StepTiming, tokens: float, sq_tokens: float, batch: int,
             context_tokens: float) -> float:
    """A step that runs prefill chunks and decode tokens together (the colocated engine).

    The decode tokens ride along as extra rows of the prefill matmuls, and their attention over
    the cached context costs what it costs in a decode step; that is the interference a
    colocated instance pays: every running sequence waits for the whole prefill chunk.
    """
    if tokens <= 0:
        return timing.decode_ms(batch, context_tokens)
    if batch <= 0:
        return timing.prefill_ms(tokens, sq_tokens)
    attention_over_context = timing.decode_ms(batch, context_tokens) - timing.decode_ms(batch, 0)
    return timing.prefill_ms(tokens + batch, sq_tokens) + max(attention_over_context, 0.0)
