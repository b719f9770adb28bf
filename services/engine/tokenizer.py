"""Tokenizer and chat template, from a `tokenizer.json` directory or from GGUF metadata."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from services.engine.checkpoint import Checkpoint, _reader, gguf_field
from services.engine.errors import InvalidRequestError, ModelLoadError

CONTROL_TOKEN_TYPE = 3  # GGUF token_type for special/control tokens


class Tokenizer:
    """Text <-> token ids, plus the model's chat template."""

    def __init__(
        self,
        backend,
        chat_template: str | None,
        bos: str | None,
        eos: str | None,
        add_bos: bool,
        eos_token_ids: tuple[int, ...],
    ):
        self.backend = backend
        self.chat_template = chat_template
        self.bos_token = bos
        self.eos_token = eos
        self.add_bos = add_bos
        self.eos_token_ids = eos_token_ids
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self._template = None

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint) -> Tokenizer:
        if ckpt.kind == "gguf":
            return cls.from_gguf(ckpt.path, ckpt.config.eos_token_ids)
        return cls.from_directory(ckpt.path, ckpt.config.eos_token_ids)

    @classmethod
    def from_directory(cls, directory: Path, eos_ids: tuple[int, ...] = ()) -> Tokenizer:
        from tokenizers import Tokenizer as Backend

        path = directory / "tokenizer.json"
        if not path.is_file():
            raise ModelLoadError(f"{directory} has no tokenizer.json")
        backend = Backend.from_file(str(path))
        config_path = directory / "tokenizer_config.json"
        config: dict[str, Any] = (
            json.loads(config_path.read_text()) if config_path.is_file() else {}
        )
        template = config.get("chat_template")
        template_file = directory / "chat_template.jinja"
        if template is None and template_file.is_file():
            template = template_file.read_text()
        bos, eos = _token_text(config.get("bos_token")), _token_text(config.get("eos_token"))
        if eos is not None and not eos_ids:
            eid = backend.token_to_id(eos)
            eos_ids = () if eid is None else (eid,)
        return cls(backend, template, bos, eos, bool(config.get("add_bos_token", False)), eos_ids)

    @classmethod
    def from_gguf(cls, path: Path, eos_ids: tuple[int, ...] = ()) -> Tokenizer:
        from tokenizers import AddedToken, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as Backend

        r = _reader(path)
        if gguf_field(r, "tokenizer.ggml.model") != "gpt2":
            raise ModelLoadError(f"{path}: only GPT-2 style BPE tokenizers are supported in GGUF")
        tokens: list[str] = gguf_field(r, "tokenizer.ggml.tokens")
        merges = [tuple(m.split(" ", 1)) for m in gguf_field(r, "tokenizer.ggml.merges")]
        types = gguf_field(r, "tokenizer.ggml.token_type") or [1] * len(tokens)
        vocab = {tok: i for i, tok in enumerate(tokens)}
        backend = Backend(
            models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False)
        )
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        if gguf_field(r, "tokenizer.ggml.pre") in ("smollm", "starcoder", "codeshell"):
            # These vocabularies were trained with every digit split off on its own.
            backend.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Digits(individual_digits=True), byte_level]
            )
        else:
            backend.pre_tokenizer = byte_level
        backend.decoder = decoders.ByteLevel()
        specials = [
            tok for tok, kind in zip(tokens, types, strict=True) if kind == CONTROL_TOKEN_TYPE
        ]
        backend.add_special_tokens(
            [AddedToken(t, special=True, normalized=False) for t in specials]
        )
        bos_id = gguf_field(r, "tokenizer.ggml.bos_token_id")
        eos_id = gguf_field(r, "tokenizer.ggml.eos_token_id")
        return cls(
            backend,
            gguf_field(r, "tokenizer.chat_template"),
            None if bos_id is None else tokens[bos_id],
            None if eos_id is None else tokens[eos_id],
            bool(gguf_field(r, "tokenizer.ggml.add_bos_token", False)),
            eos_ids or (() if eos_id is None else (int(eos_id),)),
        )

    def encode(self, text: str) -> list[int]:
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if self.add_bos and self.bos_token is not None:
            bos = self.backend.token_to_id(self.bos_token)
            if bos is not None and (not ids or ids[0] != bos):
                ids = [bos, *ids]
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **extra: Any
    ) -> str:
        """Render the conversation the way transformers' `apply_chat_template` does."""
        if not self.chat_template:
            raise InvalidRequestError("this model has no chat template; use /v1/completions")
        if self._template is None:
            self._template = _compile_template(self.chat_template)
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
                **extra,
            )
        except TemplateError as e:
            raise InvalidRequestError(f"chat template rejected the messages: {e}") from e


class TemplateError(Exception):
    """Raised from inside a chat template (its `raise_exception`)."""


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


def _compile_template(source: str):
    from jinja2.exceptions import TemplateError as JinjaTemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def tojson(
        value: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            value,
            ensure_ascii=ensure_ascii,
            indent=indent,
            separators=separators,
            sort_keys=sort_keys,
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except JinjaTemplateError as e:
        raise ModelLoadError(f"the model's chat template does not compile: {e}") from e


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text pieces, never splitting a UTF-8 character.

    It re-decodes a short window of recent tokens and emits only text that is complete, so a
    multi-byte character spread over several byte-level tokens comes out whole.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_tail: list[int] | None = None,
        skip_special_tokens: bool = True,
    ):
        self.tokenizer = tokenizer
        self.skip_special = skip_special_tokens
        self.ids: list[int] = list(prompt_tail or [])[-4:]
        self.prefix = len(self.ids)  # start of the window whose text is already emitted
        self.read = len(self.ids)  # end of what has been emitted

    def add(self, token_ids: list[int]) -> str:
        """Feed new token ids; return the text they complete (possibly empty)."""
        self.ids.extend(token_ids)
        decode = self.tokenizer.decode
        prefix_text = decode(self.ids[self.prefix : self.read], self.skip_special)
        full_text = decode(self.ids[self.prefix :], self.skip_special)
        if len(full_text) <= len(prefix_text) or full_text.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return full_text[len(prefix_text) :]

    def flush(self) -> str:
        """The text still held back (an incomplete character at the very end), as decoded."""
        decode = self.tokenizer.decode
        prefix_text = decode(self.ids[self.prefix : self.read], self.skip_special)
        full_text = decode(self.ids[self.prefix :], self.skip_special)
        self.prefix = self.read = len(self.ids)
        return full_text[len(prefix_text) :] if len(full_text) > len(prefix_text) else ""
