"""Llama-family decoder (Llama 2/3, Mistral, Qwen2, SmolLM2) over a paged KV cache.

Parameter names mirror the Hugging Face checkpoints, except that q/k/v and gate/up are fused
into one matrix each (one matmul instead of three or two); `weights.py` packs them on load.

Under tensor parallelism (see `parallel.py`) each rank builds the same modules over its shard:
the fused q/k/v rows are this rank's [q | k | v] heads, gate/up its MLP columns, o/down take
the matching input columns and end in an all-reduce, and the embedding and LM head hold a
range of vocabulary rows. With one rank there is no group and no collective on the path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from services.engine import kernels
from services.engine.attention import AttentionMetadata, paged_attention
from services.engine.config import ModelConfig
from services.engine.linear import Linear
from services.engine.parallel import TPGroup, TPShard

Rope = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # positions [T], cos and sin tables


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalize x, or (with a residual) normalize residual + x; returns (out, residual)."""
        if residual is None:
            return kernels.rms_norm(x, self.weight, self.eps), x
        return kernels.add_rms_norm(x, residual, self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, shard: TPShard, group: TPGroup | None):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = (
            shard.num_heads,
            shard.num_kv_heads,
            cfg.head_dim,
        )
        self.q_size = shard.num_heads * cfg.head_dim
        self.kv_size = shard.num_kv_heads * cfg.head_dim
        self.qkv_proj = Linear(
            cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.attention_bias
        )
        self.o_proj = Linear(self.q_size, cfg.hidden_size, bias=False)
        self.scale = cfg.head_dim**-0.5
        self.group = group

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope,
        kv: tuple[torch.Tensor, torch.Tensor],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        t = x.shape[0]
        qkv = self.qkv_proj(x)
        # Queries and keys are the leading heads of each row: rotate them in one pass.
        kernels.rope_(qkv, self.num_heads + self.num_kv_heads, self.head_dim, *rope)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(t, self.num_heads, self.head_dim)
        k = k.view(t, self.num_kv_heads, self.head_dim)
        v = v.view(t, self.num_kv_heads, self.head_dim)
        o = paged_attention(q, k, v, kv[0], kv[1], meta, self.scale)
        out = self.o_proj(o.reshape(t, self.q_size))
        return out if self.group is None else self.group.all_reduce(out)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, shard: TPShard, group: TPGroup | None):
        super().__init__()
        self.intermediate = shard.intermediate_size
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * shard.intermediate_size, bias=False)
        self.down_proj = Linear(shard.intermediate_size, cfg.hidden_size, bias=False)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.down_proj(kernels.silu_and_mul(self.gate_up_proj(x)))
        return out if self.group is None else self.group.all_reduce(out)


class VocabParallelEmbedding(nn.Module):
    """This rank's rows of the embedding: ids outside them look up zeros, and the all-reduce
    puts every id's row together."""

    def __init__(self, shard: TPShard, hidden_size: int, group: TPGroup):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(shard.vocab_rows, hidden_size))
        self.start = shard.vocab_start
        self.group = group

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        local = input_ids - self.start
        outside = (local < 0) | (local >= self.weight.shape[0])
        x = F.embedding(local.masked_fill(outside, 0), self.weight)
        return self.group.all_reduce(x.masked_fill_(outside.unsqueeze(-1), 0))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, shard: TPShard, group: TPGroup | None):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, shard, group)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg, shard, group)

    def forward(self, x, residual, rope, kv, meta):
        """(layer input, residual stream) -> (layer output, residual stream), pre-norm."""
        h, residual = self.input_layernorm(x, residual)
        h = self.self_attn(h, rope, kv, meta)
        h, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(h), residual


class LlamaModel(nn.Module):
    """Token ids of one step (all sequences flattened) in, final hidden states out."""

    def __init__(self, cfg: ModelConfig, shard: TPShard, group: TPGroup | None):
        super().__init__()
        self.config = cfg
        self.embed_tokens: nn.Module = (
            nn.Embedding(cfg.vocab_size, cfg.hidden_size)
            if group is None
            else VocabParallelEmbedding(shard, cfg.hidden_size, group)
        )
        self.layers = nn.ModuleList(DecoderLayer(cfg, shard, group) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, input_ids, rope, kv_layers, meta):
        x, residual = self.embed_tokens(input_ids), None
        for layer, kv in zip(self.layers, kv_layers, strict=True):
            x, residual = layer(x, residual, rope, kv, meta)
        return self.norm(x, residual)[0]


class LlamaForCausalLM(nn.Module):
    def __init__(
        self, cfg: ModelConfig, shard: TPShard | None = None, group: TPGroup | None = None
    ):
        super().__init__()
        shard = shard or TPShard.of(cfg)
        self.config = cfg
        self.shard = shard
        self.group = group
        self.model = LlamaModel(cfg, shard, group)
        self.lm_head = Linear(cfg.hidden_size, shard.vocab_rows, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids, rope, kv_layers, meta) -> torch.Tensor:
        return self.model(input_ids, rope, kv_layers, meta)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """float32 logits [N, vocab] of the hidden rows; under TP on rank 0 only (else None)."""
        if self.group is None:
            return self.lm_head(hidden).float()
        parts = self.group.gather(self.lm_head(hidden))
        if parts is None:
            return None
        return torch.cat(parts, dim=-1)[:, : self.config.vocab_size].float()
