"""Putting checkpoint tensors into the model: a plain loop, packing q/k/v and gate/up on the way."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from services.engine.errors import WeightError
from services.engine.model import LlamaForCausalLM

# checkpoint name part -> (fused parameter name part, index of the shard inside it)
PACKED = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _shard_range(model: LlamaForCausalLM, fused: str, index: int) -> tuple[int, int]:
    cfg = model.config
    if fused == "qkv_proj":
        q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        return [(0, q), (q, q + kv), (q + kv, q + 2 * kv)][index]
    i = cfg.intermediate_size
    return [(0, i), (i, 2 * i)][index]


@torch.no_grad()
def load_weights(model: LlamaForCausalLM, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Copy every tensor into its parameter; fail on anything missing, extra or misshapen."""
    params = dict(model.named_parameters())
    filled: dict[str, int] = {}  # parameter name -> rows (or elements) written
    for name, tensor in tensors:
        if name.endswith(IGNORED_SUFFIXES):
            continue
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue  # tied: the embedding is the head
        target, rows = name, None
        for part, (fused, index) in PACKED.items():
            if f".{part}." in name:
                target = name.replace(f".{part}.", f".{fused}.")
                rows = _shard_range(model, fused, index)
                break
        param = params.get(target)
        if param is None:
            raise WeightError(f"checkpoint has an unexpected weight {name!r}")
        dest = param if rows is None else param[rows[0] : rows[1]]
        if tuple(dest.shape) != tuple(tensor.shape):
            raise WeightError(
                f"weight {name!r} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(dest.shape)}"
            )
        dest.copy_(tensor)
        filled[target] = filled.get(target, 0) + (dest.shape[0] if rows else param.shape[0])
    for pname, param in params.items():
        if pname == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        if filled.get(pname, 0) != param.shape[0]:
            raise WeightError(f"checkpoint lacks weight for {pname!r} (or part of it)")
