"""Weights, KV capacity, and dropping configurations that don't fit."""

from __future__ import annotations

import pytest

from planner.gpu_catalog import get_gpu
from planner.memory import EngineLimits, MemoryModel, load_distserve_capacity
from planner.model_catalog import load_model

A100 = get_gpu("a100-80g-sxm")


@pytest.mark.parametrize(("name", "tp"), [("facebook/opt-13b", 1), ("facebook/opt-13b", 2),
                                          ("facebook/opt-13b", 4), ("facebook/opt-66b", 4),
                                          ("facebook/opt-66b", 8)])
def test_derived_capacity_is_close_to_distserves_measured_one(name, tp):
    model = load_model(name)
    derived = MemoryModel(model, A100, EngineLimits()).derive(tp, 1).kv_capacity_tokens
    measured = load_distserve_capacity(name)[(tp, 1)]
    assert derived == pytest.approx(measured, rel=0.2)


def test_weights_that_do_not_fit_are_dropped_with_the_numbers():
    fit = MemoryModel(load_model("opt-66b"), A100, EngineLimits()).fit(1, 1, 2048)
    assert fit.kv_capacity_tokens == 0
    assert "122.4 GiB per GPU" in fit.reason and "72.0 GiB usable" in fit.reason


def test_table_capacity_is_used_and_absent_entries_explained():
    model = load_model("opt-66b")
    memory = MemoryModel(model, A100, EngineLimits(), load_distserve_capacity(model.name),
                         "DistServe's capacity table")
    assert memory.fit(4, 1, 2048).kv_capacity_tokens == 78496
    assert memory.fit(4, 1, 2048).reason is None
    assert "weights" in memory.fit(1, 1, 2048).reason  # the physical reason comes first
    # tp=2 leaves room for only 11,600 tokens: a 16k-token request can never run.
    assert "less than the longest request" in memory.fit(2, 1, 16000).reason


def test_pipeline_stages_and_grouped_kv_heads_raise_capacity():
    memory = MemoryModel(load_model("Llama-3.1-70B"), get_gpu("h100"), EngineLimits())
    assert memory.derive(4, 2).kv_capacity_tokens > 2 * memory.derive(4, 1).kv_capacity_tokens
    # Eight KV heads: past tp=8 they replicate instead of splitting.
    per_gpu = memory.kv_bytes_per_token_per_gpu
    assert per_gpu(8, 1) == per_gpu(16, 1)
