"""The engine's memory-bound operations, each with a compiled CPU kernel and a torch fallback.

The CPU kernels (csrc/cpu_kernels.cpp) are compiled on first use with the system's C++
compiler and cached (TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions); workers started
together wait for one build. Set PDSERVE_CPU_KERNELS=0 to use plain torch everywhere. On CUDA
the torch paths run (a CUDA kernel would plug in at the same functions).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger("pdserve.engine")

SOURCE = Path(__file__).parent / "csrc" / "cpu_kernels.cpp"


@functools.cache
def cpu_ops():
    """The compiled kernel module, or None when disabled or the build fails (logged once)."""
    if os.environ.get("PDSERVE_CPU_KERNELS", "1") == "0":
        return None
    try:
        from torch.utils.cpp_extension import load

        # The build runs ninja from the virtualenv even when it is not activated.
        bindir = str(Path(sys.executable).parent)
        if bindir not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
        return load(
            name="pdserve_cpu_kernels",
            sources=[str(SOURCE)],
            # -fopenmp: at::parallel_for is a header template that only runs in parallel when
            # this file is compiled with OpenMP. Without errno and FP traps to honour, floor
            # and friends vectorize; AVX-512 is worth its full width for these loops.
            extra_cflags=[
                "-O3",
                "-march=native",
                "-fopenmp",
                "-fno-math-errno",
                "-fno-trapping-math",
                "-mprefer-vector-width=512",
            ],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as e:  # noqa: BLE001 - any build failure means: fall back, loudly
        log.warning("CPU kernels unavailable (%s); using torch ops, which are slower", e)
        return None


def _ops_for(x: torch.Tensor):
    return cpu_ops() if x.device.type == "cpu" else None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    ops = _ops_for(x)
    if ops is not None and x.is_contiguous():
        out = torch.empty_like(x)
        ops.rms_norm(out, x, weight, eps)
        return out
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """residual + x -> (rms_norm of the sum, the sum as the new residual)."""
    ops = _ops_for(x)
    if ops is not None and x.is_contiguous() and residual.is_contiguous():
        ops.add_rms_norm(x, residual, weight, eps)
        return x, residual
    residual = residual + x
    return rms_norm(residual, weight, eps), residual


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[T, 2I] (gate then up) -> silu(gate) * up, [T, I]."""
    inter = gate_up.shape[-1] // 2
    ops = _ops_for(gate_up)
    if ops is not None and gate_up.is_contiguous():
        out = torch.empty(gate_up.shape[0], inter, dtype=gate_up.dtype, device=gate_up.device)
        ops.silu_and_mul(out, gate_up)
        return out
    gate, up = gate_up.split(inter, dim=-1)
    return F.silu(gate) * up


def rope_(
    qkv: torch.Tensor,
    heads: int,
    head_dim: int,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
) -> None:
    """Rotate the first `heads` heads (queries then keys) of each row of qkv, in place.

    cos/sin are float32 tables [max_positions, head_dim] indexed by position.
    """
    ops = _ops_for(qkv)
    if ops is not None and qkv.is_contiguous():
        ops.rope(qkv, heads, head_dim, positions, cos, sin)
        return
    x = qkv[:, : heads * head_dim].view(-1, heads, head_dim)
    c = cos[positions].to(qkv.dtype).unsqueeze(1)
    s = sin[positions].to(qkv.dtype).unsqueeze(1)
    half = head_dim // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    x.copy_(x * c + rotated * s)


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    context_len: int,
    scale: float,
) -> torch.Tensor | None:
    """Causal attention of one sequence's new tokens, q [n, Hq, D] at positions context_len ..
    context_len + n - 1, over the paged cache that already holds their keys and values ->
    [n, Hq, D]; None where no compiled kernel covers it (the caller runs SDPA instead)."""
    ops = _ops_for(q)
    if (ops is None or q.dtype != torch.bfloat16 or q.shape[-1] not in (64, 128)
            or not ops.has_prefill_attention()):
        return None
    out = torch.empty(q.shape, dtype=q.dtype)
    ops.prefill_attention(out, q, k_cache, v_cache, block_table, context_len, scale)
    return out


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One query per sequence, q [B, Hq, D], over its paged context -> [B, Hq, D]."""
    ops = _ops_for(q)
    if ops is not None:
        q = q.contiguous()
        out = torch.empty_like(q)
        ops.decode_attention(out, q, k_cache, v_cache, block_tables, context_lens, scale)
        return out
    from services.engine.attention import gather_blocks

    kd = gather_blocks(k_cache, block_tables)
    vd = gather_blocks(v_cache, block_tables)
    o = F.scaled_dot_product_attention(
        q.unsqueeze(2), kd, vd, attn_mask=mask, scale=scale, enable_gqa=True
    )
    return o.squeeze(2)
