"""The search's evaluation context, as JSON, so worker processes can rebuild it.

Only JSON strings cross the process boundary: the parent sends the context once per worker and
one task per call, and gets one outcome back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from planner.cluster import Cluster
from planner.fitted_profile import ProfileLatencyModel
from planner.goodput import PhaseOutcome, PhaseTask, Sample, Slo, find_goodput
from planner.gpu_catalog import get_gpu
from planner.latency_model import LatencyModel
from planner.memory import EngineLimits
from planner.model_catalog import ModelSpec
from planner.roofline import Calibration, RooflineLatencyModel


@dataclass(frozen=True)
class Context:
    """What every phase task is evaluated against."""

    model: ModelSpec
    cluster: Cluster
    latency: LatencyModel
    limits: EngineLimits
    slo: Slo
    sample: Sample

    def evaluate(self, task: PhaseTask) -> PhaseOutcome:
        timing = self.latency.timing(task.tp, task.pp)
        return find_goodput(task, timing, self.sample, self.slo, self.limits,
                            self.model.kv_bytes_per_token)

    def to_json(self) -> str:
        return json.dumps({
            "model": asdict(self.model),
            "cluster": {"gpu": self.cluster.gpu.name, "nodes": self.cluster.nodes,
                        "gpus_per_node": self.cluster.gpus_per_node,
                        "network_gbps": self.cluster.network_gbps},
            "latency": self.latency.describe(),
            "limits": asdict(self.limits),
            "slo": asdict(self.slo),
            "sample": asdict(self.sample),
        })

    @staticmethod
    def from_json(text: str) -> Context:
        data = json.loads(text)
        model = ModelSpec(**data["model"])
        c = data["cluster"]
        cluster = Cluster(get_gpu(c["gpu"]), c["nodes"], c["gpus_per_node"], c["network_gbps"])
        latency_data = data["latency"]
        latency: LatencyModel
        if latency_data["kind"] == "roofline":
            latency = RooflineLatencyModel(model, cluster,
                                           Calibration(**latency_data["calibration"]))
        else:
            latency = ProfileLatencyModel.from_description(latency_data)
        return Context(model, cluster, latency, EngineLimits(**data["limits"]),
                       Slo(**data["slo"]), Sample(**data["sample"]))


def task_to_json(task: PhaseTask) -> str:
    return json.dumps(asdict(task))


_context: Context | None = None


def init_worker(context_json: str) -> None:
    """Process-pool initializer: rebuild the context once per worker."""
    global _context
    _context = Context.from_json(context_json)


def evaluate_json(task_json: str) -> str:
    """Evaluate one task in a worker; JSON in, JSON out."""
    assert _context is not None, "init_worker was not called"
    outcome = _context.evaluate(PhaseTask(**json.loads(task_json)))
    return json.dumps(outcome.to_json())
