"""From a validated OpenAI request to what the workers need: prompt token ids, the internal
sampling object, stop strings, logprobs. Everything a worker would refuse is refused here first,
with a message that names the field."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.engine.errors import InvalidRequestError
from services.engine.tokenizer import Tokenizer
from services.router.errors import (
    InvalidRequest,
    ModelNotFound,
    PromptTooLong,
    UnsupportedFeature,
)
from services.router.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from services.router.worker_client import Sampling


@dataclass
class PreparedRequest:
    """A request ready to route: tokens in, generation settings, and how to render the output."""

    prompt_ids: list[int]
    sampling: Sampling
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None  # alternatives to report per token; None = no logprobs
    tokens_as_ids: bool = False  # name tokens "token_id:<id>" in logprobs


class Preprocessor:
    """Tokenizes, applies the chat template and checks every limit, for one served model."""

    def __init__(
        self, tokenizer: Tokenizer, served_model_name: str, max_model_len: int, vocab_size: int
    ):
        self.tokenizer = tokenizer
        self.served_model_name = served_model_name
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size

    def completion(self, req: CompletionRequest) -> PreparedRequest:
        """POST /v1/completions -> PreparedRequest."""
        self._common(req)
        if req.echo:
            raise UnsupportedFeature("echo is not supported", param="echo")
        if req.best_of is not None and req.best_of > 1:
            raise UnsupportedFeature("best_of > 1 is not supported", param="best_of")
        if req.suffix:
            raise UnsupportedFeature("suffix is not supported", param="suffix")
        prompt_ids = self._prompt_ids(req.prompt)
        return self._prepare(req, prompt_ids, req.max_tokens, req.logprobs, "prompt")

    def chat(self, req: ChatCompletionRequest) -> PreparedRequest:
        """POST /v1/chat/completions -> PreparedRequest (the chat template applied here)."""
        self._common(req)
        if req.tools or req.functions:
            raise UnsupportedFeature("tools and function calling are not supported", param="tools")
        for name in ("tool_choice", "function_call"):
            if getattr(req, name) not in (None, "none"):
                raise UnsupportedFeature(f"{name} is not supported", param=name)
        if req.response_format and req.response_format.get("type", "text") != "text":
            raise UnsupportedFeature(
                "response_format other than text is not supported", param="response_format"
            )
        if req.top_logprobs is not None and not req.logprobs:
            raise InvalidRequest("top_logprobs needs logprobs set to true", param="top_logprobs")
        messages = [self._message(i, m) for i, m in enumerate(req.messages)]
        try:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        except InvalidRequestError as e:
            raise InvalidRequest(str(e), param="messages") from e
        prompt_ids = self.tokenizer.encode(text)
        max_tokens = req.max_completion_tokens or req.max_tokens
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        return self._prepare(req, prompt_ids, max_tokens, logprobs, "messages")

    def _common(self, req: SamplingFields) -> None:
        if req.model != self.served_model_name:
            raise ModelNotFound(
                f"the model {req.model!r} does not exist; this server serves "
                f"{self.served_model_name!r}",
                param="model",
            )
        if req.n > 1:
            raise UnsupportedFeature("n > 1 is not supported; send n separate requests", param="n")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(req, name):
                raise UnsupportedFeature(f"{name} is not supported", param=name)
        if req.logit_bias:
            raise UnsupportedFeature("logit_bias is not supported", param="logit_bias")
        if req.stream_options is not None and not req.stream:
            raise InvalidRequest("stream_options needs stream set to true", param="stream_options")

    def _message(self, index: int, message: Any) -> dict[str, Any]:
        if message.role == "tool":
            raise UnsupportedFeature(
                f"messages.{index}.role: tool messages are not supported",
                param=f"messages.{index}.role",
            )
        content = message.content
        if isinstance(content, list):
            for part in content:
                if part.type != "text" or part.text is None:
                    raise UnsupportedFeature(
                        f"messages.{index}.content: parts of type {part.type!r} are not "
                        "supported; send text",
                        param=f"messages.{index}.content",
                    )
            content = "\n".join(part.text for part in content)
        out: dict[str, Any] = {"role": message.role, "content": content or ""}
        if message.name:
            out["name"] = message.name
        return out

    def _prompt_ids(self, prompt: str | list[int] | list[str] | list[list[int]]) -> list[int]:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
            if len(prompt) != 1:
                raise UnsupportedFeature(
                    "a list of several prompts is not supported; send one request per prompt",
                    param="prompt",
                )
            prompt = prompt[0]
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        else:
            ids = list(prompt)
            bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
            if bad is not None:
                raise InvalidRequest(
                    f"prompt: token id {bad} is outside the vocabulary [0, {self.vocab_size})",
                    param="prompt",
                )
        if not ids:
            raise InvalidRequest("the prompt is empty", param="prompt")
        return ids

    def _prepare(
        self,
        req: SamplingFields,
        prompt_ids: list[int],
        max_tokens: int | None,
        logprobs: int | None,
        prompt_field: str,
    ) -> PreparedRequest:
        n = len(prompt_ids)
        if n >= self.max_model_len:
            raise PromptTooLong(
                f"this model's maximum context length is {self.max_model_len} tokens, but the "
                f"prompt has {n}; shorten it",
                param=prompt_field,
            )
        if max_tokens is None:
            max_tokens = self.max_model_len - n
        elif n + max_tokens > self.max_model_len:
            raise PromptTooLong(
                f"this model's maximum context length is {self.max_model_len} tokens, but "
                f"{n + max_tokens} were requested ({n} in the prompt, {max_tokens} to "
                f"generate); shorten the prompt or lower max_tokens",
                param="max_tokens",
            )
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        stop_ids = list(req.stop_token_ids or [])
        bad = next((t for t in stop_ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise InvalidRequest(
                f"stop_token_ids: token id {bad} is outside the vocabulary", param="stop_token_ids"
            )
        sampling = Sampling(
            max_tokens=max_tokens,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=max(req.top_k or 0, 0),
            seed=req.seed,
            stop_token_ids=stop_ids,
            ignore_eos=req.ignore_eos,
            logprobs=logprobs,
        )
        return PreparedRequest(
            prompt_ids, sampling, [s for s in stop if s], logprobs, req.return_tokens_as_token_ids
        )
