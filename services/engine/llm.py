"""Offline generation: `LLM(model).generate(prompts, params)`, the engine without a server."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from services.engine.config import EngineConfig
from services.engine.engine import LLMEngine
from services.engine.sampling_params import SamplingParams
from services.engine.sequence import FinishReason
from services.engine.stop_strings import StopStringMatcher
from services.engine.tokenizer import IncrementalDetokenizer


@dataclass
class Completion:
    """One finished generation."""

    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    num_cached_tokens: int = 0


class LLM:
    def __init__(self, model: str = "smollm2", **engine_args):
        self.engine = LLMEngine(EngineConfig(model=model, **engine_args))
        self.tokenizer = self.engine.tokenizer
        self._ids = itertools.count()

    def generate(
        self,
        prompts: list[str] | list[list[int]],
        params: SamplingParams | None = None,
        on_text: Callable[[int, str], None] | None = None,
    ) -> list[Completion]:
        """Generate for every prompt (text or token ids) together; `on_text(i, piece)` streams."""
        params = params or SamplingParams()
        results: dict[str, Completion] = {}
        detoks: dict[str, IncrementalDetokenizer] = {}
        stops: dict[str, StopStringMatcher] = {}
        order: dict[str, int] = {}
        for i, prompt in enumerate(prompts):
            ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
            rid = f"offline-{next(self._ids)}"
            self.engine.add_request(rid, ids, params)
            results[rid] = Completion(prompt_ids=ids)
            detoks[rid] = IncrementalDetokenizer(self.tokenizer, ids)
            stops[rid] = StopStringMatcher(params.stop)
            order[rid] = i
        while self.engine.has_work():
            for out in self.engine.step().outputs:
                done = results[out.request_id]
                done.token_ids.extend(out.new_token_ids)
                done.num_cached_tokens = out.num_cached_tokens
                piece = detoks[out.request_id].add(out.new_token_ids)
                if out.finished:
                    piece += detoks[out.request_id].flush()
                piece, hit = stops[out.request_id].feed(piece, final=out.finished)
                done.text += piece
                if piece and on_text:
                    on_text(order[out.request_id], piece)
                if hit and not out.finished:
                    self.engine.abort(out.request_id)
                    done.finish_reason = FinishReason.STOP.value
                elif out.finished:
                    done.finish_reason = out.finish_reason.value if out.finish_reason else None
        return [results[rid] for rid in sorted(results, key=order.get)]
