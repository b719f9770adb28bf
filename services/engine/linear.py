"""A linear layer that also keeps its weight in oneDNN's blocked layout for small batches.

Decode steps multiply a few rows by every weight of the model: the time is reading the
weights. Handing oneDNN a plain row-major weight makes it re-lay it out on every call; a copy
laid out once at load (`torch.ops.mkldnn._reorder_linear_weight`) is read at memory speed.
Measured on this project's reference machine (bf16, all SmolLM2 linears, one thread): 35.7 ->
24.6 ms at 1 row, 53.2 -> 38.1 ms at 64 rows; the same results to the bit up to 32 rows,
within a bfloat16 rounding beyond (the sums are blocked differently). Large prefill
batches are faster with the plain layout, so both are kept (the copy doubles the linear
weights' memory) and the row count picks one. Only CPU bfloat16 is packed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Above this many rows the plain layout was faster (1,024 and 4,096 rows measured).
PACKED_MAX_ROWS = 512


def _can_pack(weight: torch.Tensor) -> bool:
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.bfloat16
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


class Linear(nn.Linear):
    packed: torch.Tensor | None = None

    @torch.no_grad()
    def pack(self) -> None:
        """Lay out a copy of the weight for small batches (call after the weights are loaded)."""
        self.packed = (
            torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), 1)
            if _can_pack(self.weight)
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None and x.shape[0] <= PACKED_MAX_ROWS:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)
