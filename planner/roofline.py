"""Analytic latency: FLOPs against peak compute, bytes against memory bandwidth, plus links.

Prefill is compute-bound (linear layers plus attention quadratic in the prompt length); decode
is bound by reading the weights and the KV cache. Tensor parallelism adds two all-reduces per
layer over the node's GPU link; pipeline parallelism adds a hop per stage boundary. The
calibration factors say how close to the datasheet a real engine gets; the defaults put OPT-13B
and OPT-66B on A100-80GB within about 30% of DistServe's measured coefficients.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from planner.cluster import Cluster
from planner.model_catalog import ModelSpec


@dataclass(frozen=True)
class Calibration:
    compute_efficiency: float = 0.7  # share of peak tensor FLOP/s large GEMMs reach
    bandwidth_efficiency: float = 0.7  # share of peak memory bandwidth streaming reads reach
    step_overhead_ms: float = 2.0  # scheduling, kernel launches, sampling per engine step
    # Fixed cost of one all-reduce per doubling of the group (tree/ring steps), and of a hop.
    collective_latency_us: float = 20.0


class RooflineTiming:
    """Step times of one (tp, pp) instance of `model` on `cluster`'s GPUs."""

    def __init__(self, model: ModelSpec, cluster: Cluster, tp: int, pp: int,
                 calibration: Calibration) -> None:
        gpu = cluster.gpu
        self.pp = pp
        flops_per_s = gpu.bf16_tflops * 1e12 * calibration.compute_efficiency
        bytes_per_s = gpu.hbm_gb_s * 1e9 * calibration.bandwidth_efficiency
        width = model.num_heads * model.head_dim
        layers = model.num_layers
        # Milliseconds per unit of work on one tensor-parallel group.
        self.ms_per_token = 2 * layers * model.layer_params / (tp * flops_per_s) * 1e3
        self.ms_per_sq_token = 2 * layers * width / (tp * flops_per_s) * 1e3
        self.ms_per_seq_head = 2 * model.vocab_size * model.hidden_size / (tp * flops_per_s) * 1e3
        self.ms_per_ctx_flop = 4 * layers * width / (tp * flops_per_s) * 1e3
        # Reading the weights once per pass; each GPU reads its shard once per micro-batch, so a
        # decode round reads W/tp per GPU whatever pp is.
        self.weights_ms = model.weight_bytes / tp / bytes_per_s * 1e3
        kv_share = max(1.0 / tp, 1.0 / model.num_kv_heads)  # KV heads replicate past tp=kv
        self.ms_per_ctx_byte_token = model.kv_bytes_per_token * kv_share / pp / bytes_per_s * 1e3
        alpha_ms = calibration.collective_latency_us / 1e3
        act_bytes = model.hidden_size * model.bytes_per_param
        if tp > 1:
            link = gpu.intra_node_gb_s(tp) * 1e9
            self.allreduce_fixed_ms = 2 * layers * alpha_ms * math.log2(tp)
            self.allreduce_ms_per_token = 2 * layers * 2 * (tp - 1) / tp * act_bytes / link * 1e3
        else:
            self.allreduce_fixed_ms = 0.0
            self.allreduce_ms_per_token = 0.0
        if pp > 1:
            inside = tp * pp <= cluster.gpus_per_node
            hop_link = (gpu.intra_node_gb_s(2) if inside else cluster.network_gb_s(tp)) * 1e9
            self.hop_fixed_ms = (pp - 1) * alpha_ms
            self.hop_ms_per_token = (pp - 1) * act_bytes / hop_link * 1e3
        else:
            self.hop_fixed_ms = 0.0
            self.hop_ms_per_token = 0.0
        self.overhead_ms = calibration.step_overhead_ms

    def prefill_ms(self, tokens: float, sq_tokens: float) -> float:
        compute = self.ms_per_token * tokens + self.ms_per_sq_token * sq_tokens
        memory = self.weights_ms
        links = (self.allreduce_fixed_ms + self.hop_fixed_ms
                 + (self.allreduce_ms_per_token + self.hop_ms_per_token) * tokens)
        return max(compute, memory) + links + self.overhead_ms

    def decode_ms(self, batch: int, context_tokens: float) -> float:
        per_stage = batch / self.pp
        compute = ((self.ms_per_token + self.ms_per_seq_head) * batch
                   + self.ms_per_ctx_flop * context_tokens) / self.pp
        memory = self.weights_ms + self.ms_per_ctx_byte_token * context_tokens
        links = (self.allreduce_fixed_ms + self.hop_fixed_ms
                 + (self.allreduce_ms_per_token + self.hop_ms_per_token) * per_stage)
        return max(compute, memory) + links + self.overhead_ms


class RooflineLatencyModel:
    """Analytic latency for any model on any catalog GPU."""

    def __init__(self, model: ModelSpec, cluster: Cluster,
                 calibration: Calibration | None = None) -> None:
        self.model = model
        self.cluster = cluster
        self.calibration = calibration or Calibration()
        self.name = "roofline"

    def unsupported(self, tp: int, pp: int) -> str | None:
        return None

    def timing(self, tp: int, pp: int) -> RooflineTiming:
        return RooflineTiming(self.model, self.cluster, tp, pp, self.calibration)

    def describe(self) -> dict:
        return {"kind": "roofline", "calibration": asdict(self.calibration)}
