"""Engine fixtures: SmolLM2 in float32, its transformers twin, and tiny random checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from services.engine.checkpoint import builtin_path, resolve
from services.engine.config import EngineConfig
from services.engine.engine import LLMEngine


@pytest.fixture(scope="session")
def smollm2_engine() -> LLMEngine:
    return LLMEngine(EngineConfig(model="smollm2", dtype="float32", num_kv_blocks=512))


@pytest.fixture(scope="session")
def smollm2_reference():
    """transformers' own model from the same GGUF file: the correctness reference."""
    from transformers import AutoModelForCausalLM

    path = builtin_path("smollm2")
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, torch_dtype=torch.float32
    )
    return model.eval()


def write_tiny_checkpoint(directory: Path, arch: str = "llama", **overrides) -> Path:
    """Save a random tiny model with transformers as safetensors, plus SmolLM2's tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    common = dict(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
    )
    common.update(overrides)
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    # Random init leaves biases at zero; make them matter.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    model.save_pretrained(directory, safe_serialization=True)
    from services.engine.tokenizer import Tokenizer

    tok = Tokenizer.from_checkpoint(resolve("smollm2"))
    tok.backend.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": tok.chat_template, "eos_token": "<|im_end|>"})
    )
    return directory
