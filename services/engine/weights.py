"""Putting checkpoint tensors into the model: a plain loop, packing q/k/v and gate/up on the way.

Under tensor parallelism each rank asks the checkpoint for its slice of every tensor only
(`weight_slices` says which), so no rank reads the whole model.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from services.engine.checkpoint import SliceOf
from services.engine.config import ModelConfig
from services.engine.errors import WeightError
from services.engine.linear import Linear
from services.engine.model import LlamaForCausalLM
from services.engine.parallel import TPShard

# checkpoint name part -> (fused parameter name part, index of the shard inside it)
PACKED = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
VOCAB_PARALLEL = ("model.embed_tokens.weight", "lm_head.weight")


def weight_slices(cfg: ModelConfig, shard: TPShard) -> SliceOf:
    """For a checkpoint tensor name, the part of it that ``shard``'s rank holds."""
    d = cfg.head_dim
    q = (shard.head_start * d, (shard.head_start + shard.num_heads) * d)
    kv = (shard.kv_head_start * d, (shard.kv_head_start + shard.num_kv_heads) * d)
    mlp = (shard.intermediate_start, shard.intermediate_start + shard.intermediate_size)
    vocab = (0, shard.vocab_start, shard.vocab_start + shard.vocab_valid)
    # name part -> (dimension, start, stop): output rows of column-parallel projections,
    # input columns of row-parallel ones.
    parts = [
        (".q_proj.", (0, *q)),
        (".k_proj.", (0, *kv)),
        (".v_proj.", (0, *kv)),
        (".o_proj.", (1, *q)),
        (".gate_proj.", (0, *mlp)),
        (".up_proj.", (0, *mlp)),
        (".down_proj.", (1, *mlp)),
    ]

    def slice_of(name: str) -> tuple[int, int, int] | None:
        if name in VOCAB_PARALLEL:
            return vocab
        return next((part for key, part in parts if key in name), None)  # None: norms, whole

    return slice_of


def _shard_range(model: LlamaForCausalLM, fused: str, index: int) -> tuple[int, int]:
    cfg, shard = model.config, model.shard
    if fused == "qkv_proj":
        q, kv = shard.num_heads * cfg.head_dim, shard.num_kv_heads * cfg.head_dim
        return [(0, q), (q, q + kv), (q + kv, q + 2 * kv)][index]
    i = shard.intermediate_size
    return [(0, i), (i, 2 * i)][index]


@torch.no_grad()
def load_weights(model: LlamaForCausalLM, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Copy every tensor (this rank's slice of it) into its parameter; fail on anything missing,
    extra or misshapen."""
    params = dict(model.named_parameters())
    tied = model.config.tie_word_embeddings
    vocab_rows = model.shard.vocab_valid  # < the parameter's rows on a padded last rank
    filled: dict[str, int] = {}  # parameter name -> rows (or elements) written
    for name, tensor in tensors:
        if name.endswith(IGNORED_SUFFIXES):
            continue
        if name == "lm_head.weight" and tied:
            continue  # tied: the embedding is the head
        target, rows = name, None
        for part, (fused, index) in PACKED.items():
            if f".{part}." in name:
                target = name.replace(f".{part}.", f".{fused}.")
                rows = _shard_range(model, fused, index)
                break
        if name in VOCAB_PARALLEL:
            rows = (0, vocab_rows)
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
        if pname == "lm_head.weight" and tied:
            continue
        expected = vocab_rows if pname in VOCAB_PARALLEL else param.shape[0]
        if filled.get(pname, 0) != expected:
            raise WeightError(f"checkpoint lacks weight for {pname!r} (or part of it)")
        if expected < param.shape[0]:
            param[expected:].zero_()  # vocabulary padding: never looked up, logits cut off
    for module in model.modules():
        if isinstance(module, Linear):
            module.pack()  # the small-batch copy must see the loaded weights
