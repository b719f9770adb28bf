"""The small-batch packed weight gives exactly the plain layout's results."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from services.engine.linear import PACKED_MAX_ROWS, Linear


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 7, 32, 64, PACKED_MAX_ROWS + 1])
def test_packed_linear_equals_the_plain_matmul(bias, rows):
    """Bit for bit up to 32 rows; beyond, oneDNN blocks the sums differently, so an element
    may round to the neighbouring bfloat16."""
    torch.manual_seed(0)
    layer = Linear(576, 960, bias=bias).to(torch.bfloat16)
    layer.pack()
    assert layer.packed is not None, "bf16 on CPU must pack where oneDNN is available"
    x = torch.randn(rows, 576, dtype=torch.bfloat16)
    with torch.inference_mode():
        got, want = layer(x), F.linear(x, layer.weight, layer.bias)
    if rows <= 32:
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-2)


def test_float32_is_not_packed():
    layer = Linear(16, 8)
    layer.pack()
    assert layer.packed is None
