"""Generated tokens -> the text a client sees: incremental detokenization, then stop strings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from services.engine.stop_strings import StopStringMatcher
from services.engine.tokenizer import IncrementalDetokenizer, Tokenizer
from services.router.router_metrics import RequestTimer
from services.router.worker_client import StreamLine, TokenLogprob


@dataclass
class Piece:
    """What one worker step adds to the response: text (never a broken character) and tokens."""

    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob | None] = field(default_factory=list)
    finish_reason: str | None = None


class OutputText:
    """Text of one request's output, piece by piece, cut at the first stop string."""

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int], stop: list[str]):
        self.detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids)
        self.stops = StopStringMatcher(stop)

    def add(self, token_ids: list[int], final: bool) -> tuple[str, bool]:
        """Feed tokens; return (text to send now, whether a stop string ended the output)."""
        text = self.detokenizer.add(token_ids)
        if final:
            text += self.detokenizer.flush()
        return self.stops.feed(text, final=final)


async def pieces(
    lines: AsyncIterator[StreamLine], text: OutputText, timer: RequestTimer
) -> AsyncIterator[Piece]:
    """Turn the worker stream into pieces; a stop string ends it early (closing `lines` aborts
    the generation on the workers)."""
    try:
        async for line in lines:
            timer.tokens(len(line.token_ids))
            final = line.finish_reason is not None
            piece, hit = text.add(line.token_ids, final)
            reason = "stop" if hit else line.finish_reason
            yield Piece(piece, line.token_ids, list(line.logprobs or []), reason)
            if reason is not None:
                return
    finally:
        await lines.aclose()
