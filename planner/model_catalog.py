"""Model shapes: from a Hugging Face config.json or a known name, with derived sizes in bytes."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

from planner.errors import UnknownModelError

BYTES_PER_PARAM = {"float32": 4, "bfloat16": 2, "float16": 2, "fp8": 1, "int8": 1}

# Architectures whose MLP is two matrices (up, down); everything else is treated as gated
# (gate, up, down) like Llama, which is what nearly every recent checkpoint uses.
UNGATED_MLP = {"opt", "gpt2", "gpt_neox", "gpt_bigcode", "bloom", "falcon", "phi"}

# A Hugging Face repository id, as opposed to a local path left in `_name_or_path`.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSpec:
    """The shape of a decoder-only transformer, enough to size its weights, KV cache and FLOPs."""

    name: str
    hf_id: str | None  # Hugging Face repository id when known (goes into the Helm values)
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_context: int
    gated_mlp: bool
    tied_embeddings: bool
    learned_positions: bool  # OPT adds a learned position table of max_context rows
    dtype: str

    @property
    def bytes_per_param(self) -> int:
        return BYTES_PER_PARAM[self.dtype]

    @property
    def layer_params(self) -> int:
        """Weights of one transformer layer (attention, MLP, norms and biases)."""
        q_out = self.num_heads * self.head_dim
        kv_out = self.num_kv_heads * self.head_dim
        attention = self.hidden_size * (2 * q_out + 2 * kv_out)
        mlp_matrices = 3 if self.gated_mlp else 2
        mlp = mlp_matrices * self.hidden_size * self.intermediate_size
        small = 4 * self.hidden_size + q_out + 2 * kv_out + self.intermediate_size
        return attention + mlp + small

    @property
    def embedding_params(self) -> int:
        """Token embedding, untied LM head and position table."""
        table = self.vocab_size * self.hidden_size
        head = 0 if self.tied_embeddings else table
        positions = (self.max_context + 2) * self.hidden_size if self.learned_positions else 0
        return table + head + positions

    @property
    def param_count(self) -> int:
        return self.num_layers * self.layer_params + self.embedding_params

    @property
    def weight_bytes(self) -> int:
        return self.param_count * self.bytes_per_param

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of one token across every layer and KV head."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.bytes_per_param

    def with_dtype(self, dtype: str) -> ModelSpec:
        """The same model stored in another dtype."""
        if dtype not in BYTES_PER_PARAM:
            choices = ", ".join(BYTES_PER_PARAM)
            raise UnknownModelError(f"unknown dtype {dtype!r}; choose one of {choices}")
        return replace(self, dtype=dtype)


def _opt(name: str, layers: int, hidden: int, heads: int) -> ModelSpec:
    return ModelSpec(
        name=name, hf_id=name, num_layers=layers, hidden_size=hidden, num_heads=heads,
        num_kv_heads=heads, head_dim=hidden // heads, intermediate_size=4 * hidden,
        vocab_size=50272, max_context=2048, gated_mlp=False, tied_embeddings=True,
        learned_positions=True, dtype="float16",
    )


def _llama(
    name: str, layers: int, hidden: int, heads: int, kv_heads: int, inter: int, vocab: int,
    context: int, tied: bool = False,
) -> ModelSpec:
    return ModelSpec(
        name=name, hf_id=name, num_layers=layers, hidden_size=hidden, num_heads=heads,
        num_kv_heads=kv_heads, head_dim=hidden // heads, intermediate_size=inter,
        vocab_size=vocab, max_context=context, gated_mlp=True, tied_embeddings=tied,
        learned_positions=False, dtype="bfloat16",
    )


# Shapes copied from each repository's config.json on the Hugging Face Hub.
KNOWN_MODELS: dict[str, ModelSpec] = {
    spec.name.lower(): spec
    for spec in [
        _opt("facebook/opt-13b", 40, 5120, 40),
        _opt("facebook/opt-66b", 64, 9216, 72),
        _opt("facebook/opt-175b", 96, 12288, 96),
        _llama("HuggingFaceTB/SmolLM2-135M-Instruct", 30, 576, 9, 3, 1536, 49152, 8192,
               tied=True),
        _llama("meta-llama/Llama-2-7b-hf", 32, 4096, 32, 32, 11008, 32000, 4096),
        _llama("meta-llama/Llama-2-13b-hf", 40, 5120, 40, 40, 13824, 32000, 4096),
        _llama("meta-llama/Llama-2-70b-hf", 80, 8192, 64, 8, 28672, 32000, 4096),
        _llama("meta-llama/Llama-3.1-8B", 32, 4096, 32, 8, 14336, 128256, 131072),
        _llama("meta-llama/Llama-3.1-70B", 80, 8192, 64, 8, 28672, 128256, 131072),
    ]
}

# Short names people type; `smollm2` is the engine's built-in model.
ALIASES = {
    "smollm2": "huggingfacetb/smollm2-135m-instruct",
    "smollm2-135m": "huggingfacetb/smollm2-135m-instruct",
}


def aliases_of(spec: ModelSpec) -> list[str]:
    """The short names that stand for `spec` (a profile may be filed under one of them)."""
    return [alias for alias, name in ALIASES.items() if name == spec.name.lower()]


def known_model_names() -> list[str]:
    return sorted(spec.name for spec in KNOWN_MODELS.values())


def _lookup_known(name: str) -> ModelSpec | None:
    key = ALIASES.get(name.lower(), name.lower())
    if key in KNOWN_MODELS:
        return KNOWN_MODELS[key]
    # Let "opt-66b" or "Llama-3.1-8B" stand for the full repository id.
    matches = [spec for k, spec in KNOWN_MODELS.items() if k.split("/")[-1] == key]
    return matches[0] if len(matches) == 1 else None


def _first(config: dict, *keys: str) -> int | None:
    for key in keys:
        if config.get(key) is not None:
            return int(config[key])
    return None


def spec_from_config(config: dict, name: str) -> ModelSpec:
    """Build a ModelSpec from the parsed contents of a Hugging Face config.json."""
    if config.get("num_local_experts") or config.get("num_experts"):
        raise UnknownModelError(
            f"{name}: mixture-of-experts models are not modeled; give a dense model"
        )
    model_type = str(config.get("model_type", ""))
    hidden = _first(config, "hidden_size", "n_embd", "d_model")
    layers = _first(config, "num_hidden_layers", "n_layer", "num_layers")
    heads = _first(config, "num_attention_heads", "n_head", "num_heads")
    vocab = _first(config, "vocab_size")
    missing = [k for k, v in [("hidden_size", hidden), ("num_hidden_layers", layers),
                              ("num_attention_heads", heads), ("vocab_size", vocab)] if not v]
    if missing:
        raise UnknownModelError(f"{name}: config.json lacks {', '.join(missing)}")
    assert hidden and layers and heads and vocab
    kv_heads = _first(config, "num_key_value_heads", "num_kv_heads") or heads
    head_dim = _first(config, "head_dim") or hidden // heads
    inter = _first(config, "intermediate_size", "ffn_dim", "n_inner") or 4 * hidden
    context = _first(config, "max_position_embeddings", "n_positions", "seq_length") or 2048
    is_opt = model_type == "opt"
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    if dtype not in BYTES_PER_PARAM:
        dtype = "bfloat16"
    name_or_path = str(config.get("_name_or_path", ""))
    return ModelSpec(
        name=name,
        hf_id=name_or_path if _REPO_ID.match(name_or_path) else None,
        num_layers=layers, hidden_size=hidden, num_heads=heads, num_kv_heads=kv_heads,
        head_dim=head_dim, intermediate_size=inter, vocab_size=vocab, max_context=context,
        gated_mlp=model_type not in UNGATED_MLP,
        tied_embeddings=bool(config.get("tie_word_embeddings", is_opt)),
        learned_positions=is_opt, dtype=dtype,
    )


def load_model(name_or_path: str, dtype: str | None = None) -> ModelSpec:
    """A known model name, or a config.json path (or its directory); `dtype` overrides."""
    spec = _lookup_known(name_or_path)
    if spec is None:
        path = Path(name_or_path)
        config_path = path / "config.json" if path.is_dir() else path
        if not config_path.is_file():
            known = ", ".join(known_model_names())
            raise UnknownModelError(
                f"unknown model {name_or_path!r}: not a config.json file or a directory with "
                f"one, and not a known name ({known})"
            )
        try:
            config = json.loads(config_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UnknownModelError(f"cannot read {config_path}: {exc}") from exc
        if not isinstance(config, dict):
            raise UnknownModelError(f"{config_path} is not a JSON object")
        label = path.name if path.is_dir() else path.parent.name or str(path)
        spec = spec_from_config(config, label)
    return spec.with_dtype(dtype) if dtype else spec
