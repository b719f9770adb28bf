"""Reading checkpoints: the GGUF file and its converted cache hold the same model."""

from __future__ import annotations

import torch

from services.engine.checkpoint import _from_gguf, builtin_path, resolve
from services.engine.tokenizer import IncrementalDetokenizer, Tokenizer

SAMPLES = ["What is the capital of France?", "naïve café 12345 😀 — ok", "  spaces\tand\nlines  "]


def test_gguf_cache_holds_the_same_weights_and_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setenv("PDSERVE_CACHE", str(tmp_path))
    cached = resolve("smollm2")
    assert cached.kind == "hf" and str(cached.path).startswith(str(tmp_path))
    direct = _from_gguf(builtin_path("smollm2"), "smollm2", use_cache=False)
    assert direct.kind == "gguf"
    assert direct.config == cached.config
    ours = dict(cached.tensors())
    for name, tensor in direct.tensors():
        assert torch.equal(ours.pop(name), tensor), name
    assert not ours, f"extra tensors in the cache: {sorted(ours)}"
    a, b = Tokenizer.from_checkpoint(direct), Tokenizer.from_checkpoint(cached)
    for text in SAMPLES:
        assert a.encode(text) == b.encode(text)
    chat = [{"role": "user", "content": "hi"}]
    assert a.apply_chat_template(chat) == b.apply_chat_template(chat)
    assert a.eos_token_ids == b.eos_token_ids == (2,)


def test_incremental_detokenizer_never_splits_a_character():
    tok = Tokenizer.from_checkpoint(resolve("smollm2"))
    text = "Grüße aus Köln 😀🚀 — 東京 fin"
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok)
    pieces = [detok.add([i]) for i in ids] + [detok.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
