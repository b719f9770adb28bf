"""A pool seen as blocks: byte views into the same memory, and coalescing of adjacent runs."""

from __future__ import annotations

import pytest
import torch

from kvtransfer import InvalidParams
from kvtransfer.region import KVRegion, Run, Window, plan_runs


def test_adjacent_blocks_on_both_sides_coalesce() -> None:
    runs = plan_runs([3, 4, 5, 9, 10, 20], [40, 41, 42, 0, 2, 7], coalesce=True)
    assert runs == [Run(3, 40, 3), Run(9, 0, 1), Run(10, 2, 1), Run(20, 7, 1)]


def test_partial_windows_never_coalesce() -> None:
    assert plan_runs([1, 2], [5, 6], coalesce=False) == [Run(1, 5, 1), Run(2, 6, 1)]


def test_spans_are_views_of_the_pool_memory() -> None:
    pool = torch.zeros((4, 2, 3), dtype=torch.bfloat16)  # 12-byte blocks
    region = KVRegion(pool, 12)
    assert region.num_blocks == 4
    region.span(1, 2, 0, 12).fill_(255)
    region.span(3, 1, 4, 4).fill_(1)
    raw = pool.view(torch.uint8).reshape(4, 12)
    assert raw[0].eq(0).all() and raw[1:3].eq(255).all()
    assert raw[3].tolist() == [0] * 4 + [1] * 4 + [0] * 4


def test_several_blocks_in_one_span_need_the_whole_block() -> None:
    region = KVRegion(torch.zeros(48, dtype=torch.uint8), 12)
    with pytest.raises(InvalidParams, match="whole-block windows"):
        region.span(0, 2, 4, 4)
    with pytest.raises(InvalidParams, match="outside the pool"):
        region.span(3, 2, 0, 12)


@pytest.mark.parametrize(
    ("window", "message"),
    [
        (Window(-1, 0, 4), "src_offset must be"),
        (Window(0, 0, 0), "length must be"),
        (Window(10, 0, 4), "overruns the source block"),
        (Window(0, 6, 4), "overruns the destination block"),
    ],
)
def test_window_must_fit_both_blocks(window: Window, message: str) -> None:
    with pytest.raises(InvalidParams, match=message):
        window.check(src_block_bytes=12, dst_block_bytes=8)


def test_pool_must_be_whole_contiguous_blocks() -> None:
    with pytest.raises(InvalidParams, match="whole number"):
        KVRegion(torch.zeros(50, dtype=torch.uint8), 12)
    with pytest.raises(InvalidParams, match="contiguous"):
        KVRegion(torch.zeros((12, 4), dtype=torch.uint8).t(), 12)
