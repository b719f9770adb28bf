"""Memory: weights per GPU, KV-cache capacity per instance, and why a configuration won't fit."""

from __future__ import annotations

import csv
from dataclasses import dataclass

from planner.fitted_profile import bundled_data_path
from planner.gpu_catalog import GpuSpec
from planner.model_catalog import ModelSpec

DISTSERVE_CAPACITY = "distserve-max-num-tokens.csv"
GIB = 1 << 30
# CUDA context, cuBLAS/NCCL workspaces and allocator slack per GPU, outside the KV pool.
RUNTIME_RESERVE_BYTES = 1 * GIB


@dataclass(frozen=True)
class EngineLimits:
    """Engine settings that bound batches and memory (pdserve worker flags of the same names)."""

    block_size: int = 16  # --block-size: KV tokens per block
    max_num_seqs: int = 256  # --max-num-seqs: sequences in one batch
    max_num_batched_tokens: int = 4096  # --max-num-batched-tokens: token budget per step
    gpu_memory_utilization: float = 0.9  # share of device memory the engine may use


@dataclass(frozen=True)
class MemoryFit:
    """How one (tp, pp) instance uses memory; `reason` is set when it does not fit."""

    tp: int
    pp: int
    weights_per_gpu_bytes: int
    kv_capacity_tokens: int
    source: str  # "derived", "DistServe table" or "profile"
    reason: str | None = None


def load_distserve_capacity(model_name: str) -> dict[tuple[int, int], int] | None:
    """DistServe's measured KV capacity per (tp, pp) for an OPT model on A100-80GB, if listed."""
    path = bundled_data_path(DISTSERVE_CAPACITY)
    table: dict[tuple[int, int], int] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            if row["model"].lower() == model_name.lower():
                table[(int(row["tp"]), int(row["pp"]))] = int(row["max_num_tokens"])
    return table or None


class MemoryModel:
    """KV capacity per instance: a measured table when one applies, else derived from sizes."""

    def __init__(self, model: ModelSpec, gpu: GpuSpec, limits: EngineLimits,
                 table: dict[tuple[int, int], int] | None = None, table_source: str = "") -> None:
        self.model = model
        self.gpu = gpu
        self.limits = limits
        self.table = table
        self.table_source = table_source

    def activation_bytes(self, tp: int) -> int:
        """Peak activations of one full prefill step plus the logits of a full batch."""
        m = self.model
        per_token = (4 * m.hidden_size + 2 * m.intermediate_size // tp) * m.bytes_per_param
        logits = self.limits.max_num_seqs * m.vocab_size * 4
        return self.limits.max_num_batched_tokens * per_token + logits

    def kv_bytes_per_token_per_gpu(self, tp: int, pp: int) -> float:
        m = self.model
        kv_heads_per_gpu = max(m.num_kv_heads / tp, 1.0)  # heads replicate once tp > kv heads
        return 2 * (m.num_layers / pp) * kv_heads_per_gpu * m.head_dim * m.bytes_per_param

    def derive(self, tp: int, pp: int) -> MemoryFit:
        """Capacity from the model's sizes and the GPU's memory."""
        weights = self.model.weight_bytes // (tp * pp)
        usable = self.gpu.memory_bytes * self.limits.gpu_memory_utilization
        free = usable - weights - self.activation_bytes(tp) - RUNTIME_RESERVE_BYTES
        if free <= 0:
            need = (weights + self.activation_bytes(tp) + RUNTIME_RESERVE_BYTES) / GIB
            reason = (
                f"weights {weights / GIB:.1f} GiB per GPU plus runtime need {need:.1f} GiB, "
                f"more than {usable / GIB:.1f} GiB usable on a {self.gpu.description}"
            )
            return MemoryFit(tp, pp, weights, 0, "derived", reason)
        tokens = int(free / self.kv_bytes_per_token_per_gpu(tp, pp))
        tokens -= tokens % self.limits.block_size
        return MemoryFit(tp, pp, weights, tokens, "derived")

    def fit(self, tp: int, pp: int, longest_request: int) -> MemoryFit:
        """Capacity of (tp, pp); not fitting when the KV cache cannot hold `longest_request`."""
        derived = self.derive(tp, pp)
        if self.table is not None:
            if (tp, pp) not in self.table:
                reason = derived.reason or f"{self.table_source} lists no capacity for it"
                return MemoryFit(tp, pp, derived.weights_per_gpu_bytes, 0, self.table_source,
                                 reason)
            fit = MemoryFit(tp, pp, derived.weights_per_gpu_bytes, self.table[(tp, pp)],
                            self.table_source)
        else:
            fit = derived
        if fit.reason is None and fit.kv_capacity_tokens < longest_request:
            reason = (f"KV cache holds {fit.kv_capacity_tokens} tokens, less than the longest "
                      f"request ({longest_request} tokens)")
            return MemoryFit(tp, pp, fit.weights_per_gpu_bytes, fit.kv_capacity_tokens,
                             fit.source, reason)
        return fit
