"""Model shapes from known names and from Hugging Face config.json files."""

from __future__ import annotations

import json

import pytest

from planner.errors import UnknownModelError
from planner.model_catalog import load_model


@pytest.mark.parametrize(("name", "billions"), [
    ("facebook/opt-13b", 12.85),
    ("opt-66b", 65.7),
    ("facebook/opt-175b", 174.6),
    ("meta-llama/Llama-3.1-8B", 8.03),
    ("Llama-3.1-70B", 70.6),
    ("meta-llama/Llama-2-7b-hf", 6.74),
])
def test_known_models_have_their_published_sizes(name, billions):
    assert load_model(name).param_count / 1e9 == pytest.approx(billions, rel=0.01)


def test_smollm2_alias_is_the_engines_default_model():
    spec = load_model("smollm2")
    assert spec.hf_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (spec.num_layers, spec.num_heads, spec.num_kv_heads, spec.hidden_size) == (30, 9, 3, 576)
    assert spec.param_count / 1e6 == pytest.approx(134.5, rel=0.01)


def test_kv_bytes_per_token_counts_every_layer_and_kv_head():
    # OPT-13B in fp16: 2 (K and V) x 40 layers x 5120 x 2 bytes.
    assert load_model("opt-13b").kv_bytes_per_token == 2 * 40 * 5120 * 2
    # Grouped-query attention stores only the KV heads: Llama-3.1-8B has 8 of 32.
    assert load_model("Llama-3.1-8B").kv_bytes_per_token == 2 * 32 * 8 * 128 * 2


def test_config_json_of_a_llama_style_model(tmp_path):
    config = {
        "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
        "vocab_size": 128256, "max_position_embeddings": 131072, "torch_dtype": "bfloat16",
        "tie_word_embeddings": False, "_name_or_path": "meta-llama/Llama-3.1-8B",
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    from_dir = load_model(str(tmp_path))
    from_file = load_model(str(tmp_path / "config.json"))
    assert from_dir == from_file
    assert from_dir.param_count == load_model("Llama-3.1-8B").param_count
    assert from_dir.hf_id == "meta-llama/Llama-3.1-8B"
    assert from_dir.bytes_per_param == 2


def test_config_json_of_an_opt_model_uses_two_matrix_mlp_and_positions(tmp_path):
    config = {"model_type": "opt", "hidden_size": 5120, "num_hidden_layers": 40,
              "num_attention_heads": 40, "ffn_dim": 20480, "vocab_size": 50272,
              "max_position_embeddings": 2048, "torch_dtype": "float16"}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    spec = load_model(str(path))
    assert spec.param_count == load_model("opt-13b").param_count
    assert spec.hf_id is None  # nothing tells us the repository id


def test_dtype_override_changes_bytes():
    assert load_model("opt-13b", "float32").weight_bytes == 2 * load_model("opt-13b").weight_bytes
    with pytest.raises(UnknownModelError, match="unknown dtype"):
        load_model("opt-13b", "float8")


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "cannot read"),
    ('{"model_type": "llama", "hidden_size": 64}', "lacks num_hidden_layers"),
    ('{"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "vocab_size": 10, '
     '"num_local_experts": 8}', "mixture-of-experts"),
])
def test_bad_config_files_say_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(UnknownModelError, match=message):
        load_model(str(path))


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UnknownModelError, match="facebook/opt-13b"):
        load_model("opt-14b")
