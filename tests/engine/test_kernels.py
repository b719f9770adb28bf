"""The compiled CPU kernels agree with the plain torch paths they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from services.engine import kernels
from services.engine.attention import gather_blocks

pytestmark = pytest.mark.skipif(kernels.cpu_ops() is None, reason="CPU kernels did not build")

DTYPES = [torch.float32, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", DTYPES)
def test_norms_and_mlp_match_torch(dtype, monkeypatch):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 576, generator=g).to(dtype)
    res = torch.randn(37, 576, generator=g).to(dtype)
    w = torch.randn(576, generator=g).to(dtype)
    gu = torch.randn(37, 2 * 1536, generator=g).to(dtype)
    got = (
        kernels.rms_norm(x, w, 1e-5),
        *kernels.add_rms_norm(x.clone(), res.clone(), w, 1e-5),
        kernels.silu_and_mul(gu),
    )
    monkeypatch.setattr(kernels, "_ops_for", lambda t: None)
    want = (
        kernels.rms_norm(x, w, 1e-5),
        *kernels.add_rms_norm(x.clone(), res.clone(), w, 1e-5),
        kernels.silu_and_mul(gu),
    )
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.float(), b.float(), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_matches_torch(dtype, monkeypatch):
    from services.engine.rope import cos_sin_table

    cos, sin = cos_sin_table(64, 100000.0, None, 512)
    qkv = torch.randn(23, 15 * 64).to(dtype)
    pos = torch.randint(0, 512, (23,))
    a, b = qkv.clone(), qkv.clone()
    kernels.rope_(a, 12, 64, pos, cos, sin)
    monkeypatch.setattr(kernels, "_ops_for", lambda t: None)
    kernels.rope_(b, 12, 64, pos, cos, sin)
    torch.testing.assert_close(a.float(), b.float(), atol=TOL[dtype], rtol=TOL[dtype])
    assert torch.equal(a[:, 12 * 64 :], qkv[:, 12 * 64 :]), "values must not be rotated"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "hkv,hq,d",
    [(3, 9, 64), (2, 8, 128), (1, 9, 64), (2, 4, 32)],
    ids=["smollm2-shape", "d128", "group9-portable", "d32-portable"],
)
@pytest.mark.parametrize("bs", [16, 32], ids=["block16", "block32"])
def test_decode_attention_matches_sdpa_over_gathered_blocks(dtype, hkv, hq, d, bs):
    g = torch.Generator().manual_seed(1)
    nb, layers = 64, 2
    pool = torch.randn(nb, hkv, layers, 2, bs, d, generator=g).to(dtype)
    k_cache, v_cache = pool[:, :, 1, 0], pool[:, :, 1, 1]  # strided views, as the engine uses
    # Partial and whole blocks, 16-token chunks within a 32-token block, and a long context
    # whose scores peak late (the online softmax rescales what it summed before).
    lens = torch.tensor([1, 16, 17, 90, 5, 31, 33, 600])
    width = int((lens.max() + bs - 1) // bs)
    tables = torch.stack([torch.randperm(nb, generator=g)[:width] for _ in lens])
    q = torch.randn(len(lens), hq, d, generator=g).to(dtype)
    last = tables[-1, (int(lens[-1]) - 1) // bs]
    k_cache[last] *= 4  # the final block's keys dominate the last sequence's scores
    mask = (torch.arange(width * bs)[None] < lens[:, None])[:, None, None, :]
    got = kernels.decode_attention(q, k_cache, v_cache, tables, lens, mask, d**-0.5)
    want = F.scaled_dot_product_attention(
        q.unsqueeze(2),
        gather_blocks(k_cache, tables),
        gather_blocks(v_cache, tables),
        attn_mask=mask,
        scale=d**-0.5,
        enable_gqa=True,
    ).squeeze(2)
    torch.testing.assert_close(got.float(), want.float(), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_write_kv_stores_rows_where_advanced_indexing_would(dtype):
    from services.engine.attention import AttentionMetadata, write_kv

    g = torch.Generator().manual_seed(2)
    pool = torch.zeros(12, 3, 2, 2, 16, 64, dtype=dtype)
    expected = pool.clone()
    qkv = torch.randn(5, 15 * 64, generator=g).to(dtype)  # [q | k | v] rows, as the model has
    k = qkv[:, 9 * 64 : 12 * 64].view(5, 3, 64)
    v = qkv[:, 12 * 64 :].view(5, 3, 64)
    blocks, offsets = torch.tensor([3, 3, 7, 0, 11]), torch.tensor([0, 1, 15, 4, 9])
    meta = AttentionMetadata(blocks, offsets, [], 0, None, None, None)
    write_kv(pool[:, :, 1, 0], pool[:, :, 1, 1], k, v, meta)
    expected[:, :, 1, 0][blocks, :, offsets] = k
    expected[:, :, 1, 1][blocks, :, offsets] = v
    assert torch.equal(pool, expected)


@pytest.mark.skipif(
    kernels.cpu_ops() is None or not kernels.cpu_ops().has_prefill_attention(),
    reason="built without AVX512-BF16",
)
@pytest.mark.parametrize("hkv,hq,d", [(3, 9, 64), (2, 8, 128), (1, 4, 64)],
                         ids=["smollm2-shape", "d128", "group4"])
@pytest.mark.parametrize("bs", [16, 32], ids=["block16", "block32"])
@pytest.mark.parametrize("context,n", [(0, 256), (0, 37), (0, 1), (48, 20), (100, 131)])
def test_prefill_attention_matches_sdpa_over_gathered_blocks(hkv, hq, d, bs, context, n):
    g = torch.Generator().manual_seed(3)
    nb, layers = 32, 2
    pool = torch.randn(nb, hkv, layers, 2, bs, d, generator=g).to(torch.bfloat16)
    k_cache, v_cache = pool[:, :, 0, 0], pool[:, :, 0, 1]
    total = context + n
    table = torch.randperm(nb, generator=g)[: (total + bs - 1) // bs]
    # q as the model has it: a view into wider [q | k | v] rows.
    rows = torch.randn(n, (hq + 2 * hkv) * d, generator=g).to(torch.bfloat16)
    q = rows[:, : hq * d].view(n, hq, d)
    got = kernels.prefill_attention(q, k_cache, v_cache, table, context, d**-0.5)
    keys = gather_blocks(k_cache, table)[:, :total].unsqueeze(0)
    values = gather_blocks(v_cache, table)[:, :total].unsqueeze(0)
    mask = torch.arange(total)[None] <= torch.arange(n)[:, None] + context
    want = F.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0), keys, values, attn_mask=mask, scale=d**-0.5,
        enable_gqa=True,
    ).squeeze(0).transpose(0, 1)
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)
