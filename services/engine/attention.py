"""Attention over the paged KV pool, for a step that mixes prefill chunks and decode tokens.

`paged_attention` is the one function a faster kernel (CUDA, or a CPU kernel) replaces: it gets
this step's new queries, keys and values, one layer's cache views and the step's metadata, writes
the new keys/values into their slots and returns the attention output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from services.engine import kernels


@dataclass
class PrefillSegment:
    """A run of new tokens of one sequence: rows [start, end) of the step's token array."""

    start: int
    end: int
    context_len: int  # tokens already in the cache before this chunk
    block_table: torch.Tensor  # [num_blocks] block ids covering context_len + (end - start)


@dataclass
class AttentionMetadata:
    """Where this step's tokens live in the pool and what each one may attend to."""

    slot_blocks: torch.Tensor  # [T] block id of each new token
    slot_offsets: torch.Tensor  # [T] offset inside that block
    prefills: list[PrefillSegment]
    num_prefill_tokens: int
    decode_block_tables: torch.Tensor | None  # [B, max_blocks], padded with block 0
    decode_context_lens: torch.Tensor | None  # [B] tokens each decode query attends to
    decode_mask: torch.Tensor | None  # [B, 1, 1, max_blocks * block_size] True = attend


def write_kv(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    meta: AttentionMetadata,
) -> None:
    """Store this step's keys and values [T, kv_heads, head_dim] in their cache slots."""
    ops = kernels.cpu_ops() if k.device.type == "cpu" else None
    if ops is not None:
        ops.write_kv(k_cache, v_cache, k, v, meta.slot_blocks, meta.slot_offsets)
        return
    k_cache[meta.slot_blocks, :, meta.slot_offsets] = k
    v_cache[meta.slot_blocks, :, meta.slot_offsets] = v


def gather_blocks(cache: torch.Tensor, block_table: torch.Tensor) -> torch.Tensor:
    """[..., nb] block ids -> [..., kv_heads, nb * block_size, head_dim] contiguous keys/values."""
    tiles = cache[block_table]  # [..., nb, H, bs, D]
    tiles = tiles.movedim(-4, -3)  # [..., H, nb, bs, D]
    return tiles.flatten(-3, -2)


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """q [T, Hq, D], k/v [T, Hkv, D] -> output [T, Hq, D]."""
    write_kv(k_cache, v_cache, k, v, meta)
    out = torch.empty_like(q)
    for seg in meta.prefills:
        o = kernels.prefill_attention(
            q[seg.start : seg.end], k_cache, v_cache, seg.block_table, seg.context_len, scale
        )
        if o is not None:
            out[seg.start : seg.end] = o
            continue
        qs = q[seg.start : seg.end].transpose(0, 1).unsqueeze(0)  # [1, Hq, n, D]
        if seg.context_len == 0:
            ks = k[seg.start : seg.end].transpose(0, 1).unsqueeze(0)
            vs = v[seg.start : seg.end].transpose(0, 1).unsqueeze(0)
            o = F.scaled_dot_product_attention(
                qs, ks, vs, is_causal=True, scale=scale, enable_gqa=True
            )
        else:
            total = seg.context_len + seg.end - seg.start
            ks = gather_blocks(k_cache, seg.block_table)[:, :total].unsqueeze(0)
            vs = gather_blocks(v_cache, seg.block_table)[:, :total].unsqueeze(0)
            # New token i sits at position context_len + i and sees every key up to it.
            rows = torch.arange(seg.end - seg.start).unsqueeze(1) + seg.context_len
            mask = torch.arange(total).unsqueeze(0) <= rows
            o = F.scaled_dot_product_attention(
                qs, ks, vs, attn_mask=mask, scale=scale, enable_gqa=True
            )
        out[seg.start : seg.end] = o.squeeze(0).transpose(0, 1)
    if meta.decode_block_tables is not None:
        n = meta.num_prefill_tokens
        out[n:] = kernels.decode_attention(
            q[n:],
            k_cache,
            v_cache,
            meta.decode_block_tables,
            meta.decode_context_lens,
            meta.decode_mask,
            scale,
        )
    return out
