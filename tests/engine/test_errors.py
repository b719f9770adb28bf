"""Bad checkpoints and bad requests give typed errors that say what is wrong."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file, save_file

from services.engine.checkpoint import resolve
from services.engine.config import EngineConfig
from services.engine.engine import LLMEngine
from services.engine.errors import (
    InvalidRequestError,
    ModelLoadError,
    PromptTooLongError,
    UnsupportedModelError,
    WeightError,
)
from services.engine.sampling_params import SamplingParams
from tests.engine.conftest import write_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), max_position_embeddings=256)


def edit_checkpoint(src, dst, edit_config=None, edit_weights=None):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    if edit_config:
        cfg = json.loads((dst / "config.json").read_text())
        edit_config(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    if edit_weights:
        weights = load_file(dst / "model.safetensors")
        edit_weights(weights)
        save_file(weights, dst / "model.safetensors")
    return dst


def test_unknown_architecture(tiny_dir, tmp_path):
    bad = edit_checkpoint(
        tiny_dir, tmp_path / "m", edit_config=lambda c: c.update(architectures=["GPT2LMHeadModel"])
    )
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel"):
        resolve(str(bad))


def test_missing_weight(tiny_dir, tmp_path):
    bad = edit_checkpoint(
        tiny_dir, tmp_path / "m", edit_weights=lambda w: w.pop("model.layers.1.mlp.up_proj.weight")
    )
    with pytest.raises(WeightError, match="layers.1.mlp.gate_up_proj"):
        LLMEngine(EngineConfig(model=str(bad), dtype="float32", num_kv_blocks=8))


def test_misshapen_weight(tiny_dir, tmp_path):
    def shrink(w):
        w["model.layers.0.self_attn.o_proj.weight"] = w["model.layers.0.self_attn.o_proj.weight"][
            :, :10
        ].clone()

    bad = edit_checkpoint(tiny_dir, tmp_path / "m", edit_weights=shrink)
    with pytest.raises(WeightError, match=r"o_proj.*shape \(64, 10\)"):
        LLMEngine(EngineConfig(model=str(bad), dtype="float32", num_kv_blocks=8))


def test_missing_model_and_config(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        resolve(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="config.json"):
        resolve(str(tmp_path))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -3}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
    ],
)
def test_bad_sampling_params(kwargs, message):
    with pytest.raises(InvalidRequestError, match=message):
        SamplingParams(**kwargs)


def test_bad_prompts_are_refused_and_leak_nothing(tiny_dir):
    engine = LLMEngine(EngineConfig(model=str(tiny_dir), dtype="float32", num_kv_blocks=64))
    params = SamplingParams(max_tokens=4)
    with pytest.raises(PromptTooLongError, match="maximum context length is 256"):
        engine.add_request("long", list(range(3, 300)), params)
    with pytest.raises(PromptTooLongError, match="maximum context length"):
        engine.add_request("long-output", list(range(3, 200)), SamplingParams(max_tokens=100))
    with pytest.raises(InvalidRequestError, match="empty"):
        engine.add_request("empty", [], params)
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        engine.add_request("vocab", [5, 49152], params)
    engine.add_request("ok", [5, 6, 7], params)
    with pytest.raises(InvalidRequestError, match="already in use"):
        engine.add_request("ok", [5, 6, 7], params)
    while engine.has_work():
        engine.step()
    assert engine.blocks.num_free == engine.blocks.num_blocks
