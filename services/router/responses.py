"""Pieces of output -> OpenAI response bodies and stream chunks, for completions and chat."""

from __future__ import annotations

from typing import Any

from services.engine.tokenizer import Tokenizer
from services.router.output_text import Piece
from services.router.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatLogprobs,
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    Delta,
    TokenLogprob,
    TopLogprob,
    Usage,
    new_id,
    now,
)
from services.router.worker_client import TokenLogprob as EngineLogprob


class Renderer:
    """Shared state of one response: id, timestamps, usage, and token text for logprobs."""

    prefix = ""  # of the response id
    chunk_object = ""  # the `object` of stream chunks

    def __init__(
        self,
        tokenizer: Tokenizer,
        model: str,
        num_prompt_tokens: int,
        logprobs: int | None,
        include_usage: bool = False,
        tokens_as_ids: bool = False,
    ):
        self.tokenizer = tokenizer
        self.id = new_id(self.prefix)
        self.created = now()
        self.model = model
        self.num_prompt_tokens = num_prompt_tokens
        self.num_output_tokens = 0
        self.want_logprobs = logprobs is not None
        self.include_usage = include_usage
        self.tokens_as_ids = tokens_as_ids
        self.text = ""
        self.finish_reason: str | None = None

    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=self.num_prompt_tokens,
            completion_tokens=self.num_output_tokens,
            total_tokens=self.num_prompt_tokens + self.num_output_tokens,
        )

    def add(self, piece: Piece) -> None:
        self.num_output_tokens += len(piece.token_ids)
        self.text += piece.text
        self.finish_reason = piece.finish_reason or self.finish_reason

    def token_text(self, token_id: int) -> str:
        if self.tokens_as_ids:
            return f"token_id:{token_id}"
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def usage_chunk(self) -> dict[str, Any] | None:
        """The last stream chunk (empty choices, usage) when the client asked for usage."""
        if not self.include_usage:
            return None
        return self._chunk_base() | {"choices": [], "usage": self.usage().model_dump()}

    def _chunk_base(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self.chunk_object,
            "created": self.created,
            "model": self.model,
        }


class CompletionRenderer(Renderer):
    prefix = "cmpl"
    chunk_object = "text_completion"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.logprobs = CompletionLogprobs()

    def _logprobs(self, piece: Piece, text_start: int) -> CompletionLogprobs | None:
        if not self.want_logprobs:
            return None
        out = CompletionLogprobs()
        offset = text_start
        for token_id, lp in zip(piece.token_ids, _padded(piece), strict=True):
            token = self.token_text(token_id)
            out.tokens.append(token)
            out.text_offset.append(offset)
            offset += len(token)
            out.token_logprobs.append(None if lp is None else lp.logprob)
            if lp is None:
                out.top_logprobs.append(None)
            else:
                top = {self.token_text(t): v for t, v in lp.top}
                top.setdefault(token, lp.logprob)
                out.top_logprobs.append(top)
        return out

    def chunk(self, piece: Piece) -> dict[str, Any] | None:
        """The stream chunk for `piece`, or None when it carries nothing to send."""
        start = len(self.text)
        self.add(piece)
        lps = self._logprobs(piece, start)
        if not piece.text and piece.finish_reason is None and lps is None:
            return None
        choice = CompletionChoice(text=piece.text, logprobs=lps, finish_reason=piece.finish_reason)
        body = self._chunk_base() | {"choices": [choice.model_dump()]}
        if self.include_usage:
            body["usage"] = None
        return body

    def collect(self, piece: Piece) -> None:
        """Add a piece to a non-streamed response."""
        lps = self._logprobs(piece, len(self.text))
        self.add(piece)
        if lps is not None:
            for name in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                getattr(self.logprobs, name).extend(getattr(lps, name))

    def response(self) -> dict[str, Any]:
        return CompletionResponse(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[
                CompletionChoice(
                    text=self.text,
                    logprobs=self.logprobs if self.want_logprobs else None,
                    finish_reason=self.finish_reason,
                )
            ],
            usage=self.usage(),
        ).model_dump()


class ChatRenderer(Renderer):
    prefix = "chatcmpl"
    chunk_object = "chat.completion.chunk"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.logprobs = ChatLogprobs()
        self.sent_role = False

    def _logprobs(self, piece: Piece) -> ChatLogprobs | None:
        if not self.want_logprobs:
            return None
        out = ChatLogprobs()
        for token_id, lp in zip(piece.token_ids, _padded(piece), strict=True):
            if lp is None:
                continue
            token = self.token_text(token_id)
            out.content.append(
                TokenLogprob(
                    token=token,
                    logprob=lp.logprob,
                    bytes=list(token.encode()),
                    top_logprobs=[
                        TopLogprob(token=t, logprob=v, bytes=list(t.encode()))
                        for t, v in ((self.token_text(i), v) for i, v in lp.top)
                    ],
                )
            )
        return out

    def chunks(self, piece: Piece) -> list[dict[str, Any]]:
        """The stream chunks for `piece`: the role first, then text, then the finish reason."""
        self.add(piece)
        out = []
        if not self.sent_role:
            self.sent_role = True
            out.append(self._chunk(Delta(role="assistant", content=""), None, None))
        lps = self._logprobs(piece)
        if piece.text or lps is not None:
            out.append(self._chunk(Delta(content=piece.text), lps, None))
        if piece.finish_reason is not None:
            out.append(self._chunk(Delta(), None, piece.finish_reason))
        return out

    def _chunk(
        self, delta: Delta, lps: ChatLogprobs | None, finish_reason: str | None
    ) -> dict[str, Any]:
        choice = ChatChunkChoice(delta=delta, logprobs=lps, finish_reason=finish_reason)
        body = ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=[choice]
        ).model_dump()
        body["choices"][0]["delta"] = delta.model_dump(exclude_none=True)
        if not self.include_usage:
            del body["usage"]
        return body

    def collect(self, piece: Piece) -> None:
        """Add a piece to a non-streamed response."""
        lps = self._logprobs(piece)
        self.add(piece)
        if lps is not None:
            self.logprobs.content.extend(lps.content)

    def response(self) -> dict[str, Any]:
        return ChatCompletionResponse(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[
                ChatChoice(
                    message=AssistantMessage(content=self.text),
                    logprobs=self.logprobs if self.want_logprobs else None,
                    finish_reason=self.finish_reason,
                )
            ],
            usage=self.usage(),
        ).model_dump()


def _padded(piece: Piece) -> list[EngineLogprob | None]:
    """One logprob entry per token, None where the worker sent none."""
    lps = list(piece.logprobs)
    return lps + [None] * (len(piece.token_ids) - len(lps))
