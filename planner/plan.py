"""What the planner answers: deployments, their predicted latency, and the search's findings."""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.goodput import PhaseOutcome


@dataclass(frozen=True)
class RolePlan:
    """One role's instances: shape, how many, and what one instance sustains (requests/s)."""

    tp: int
    pp: int
    replicas: int
    goodput: float
    kv_capacity_tokens: int

    @property
    def gpus_per_instance(self) -> int:
        return self.tp * self.pp

    @property
    def gpus(self) -> int:
        return self.gpus_per_instance * self.replicas

    def shape(self) -> str:
        return f"tp{self.tp}" + (f"pp{self.pp}" if self.pp > 1 else "")

    def to_json(self) -> dict:
        return {"tp": self.tp, "pp": self.pp, "replicas": self.replicas,
                "goodput_per_instance": self.goodput,
                "kv_capacity_tokens": self.kv_capacity_tokens}


@dataclass(frozen=True)
class Prediction:
    """End-to-end simulation of the whole deployment at one total rate."""

    rate: float  # requests/s offered to the deployment
    ttft_p90: float  # seconds
    tpot_p90: float  # seconds
    attainment: float  # share of requests meeting both SLOs

    def to_json(self) -> dict:
        return {"rate": self.rate, "ttft_p90": self.ttft_p90, "tpot_p90": self.tpot_p90,
                "attainment": self.attainment}


@dataclass
class Plan:
    """A deployment: disaggregated (prefill + decode) or colocated (one role doing both)."""

    kind: str  # "disaggregated" or "colocated"
    affinity: str  # "high", "low", or "" for colocated
    prefill: RolePlan | None
    decode: RolePlan | None
    colocated: RolePlan | None
    goodput_per_gpu: float  # of the configuration, replicas mixed in the best ratio
    capacity: float  # requests/s the planned replicas sustain (per the per-instance goodputs)
    layout: str  # how instances sit on nodes
    budget: int = 0  # colocated: prefill token budget per step
    policy: str = ""  # colocated: "chunked" or "prefill-first"
    predicted: Prediction | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def roles(self) -> list[RolePlan]:
        return [r for r in (self.prefill, self.decode, self.colocated) if r is not None]

    @property
    def gpus(self) -> int:
        return sum(r.gpus for r in self.roles)

    @property
    def served_per_gpu(self) -> float:
        """What the planned whole instances serve per GPU they take (requests/s)."""
        return self.capacity / self.gpus

    def to_json(self) -> dict:
        scheduling = ({"budget": self.budget, "policy": self.policy}
                      if self.kind == "colocated" else {})
        return {
            "kind": self.kind,
            **scheduling,
            "configuration": self.label(),
            "prefill": self.prefill.to_json() if self.prefill else None,
            "decode": self.decode.to_json() if self.decode else None,
            "colocated": self.colocated.to_json() if self.colocated else None,
            "gpus": self.gpus,
            "goodput_per_gpu": self.goodput_per_gpu,
            "capacity": self.capacity,
            "placement": {"affinity": self.affinity, "layout": self.layout},
            "predicted": self.predicted.to_json() if self.predicted else None,
        }

    def label(self) -> str:
        if self.kind == "colocated":
            assert self.colocated is not None
            return f"colocated {self.colocated.shape()} ({self.policy}, budget {self.budget})"
        assert self.prefill is not None and self.decode is not None
        return (f"P {self.prefill.shape()} + D {self.decode.shape()}, "
                f"{self.affinity} affinity")


@dataclass
class SearchResult:
    """Everything the search found, best disaggregated plan first."""

    plans: list[Plan]  # disaggregated, best first; none on a cluster too small for a pair
    colocated: list[Plan]  # colocated baseline, best first
    outcomes: list[PhaseOutcome]  # every phase task evaluated or pruned
    dropped: list[tuple[str, str]]  # (configuration, reason) dropped before simulation
    latency_model: str
    num_requests: int
    deployment: str = "disaggregated"  # the kind recommended: "disaggregated" or "colocated"

    @property
    def best(self) -> Plan | None:
        """The best disaggregated plan (None when no prefill + decode pair fits the cluster)."""
        return self.plans[0] if self.plans else None

    @property
    def deployable_colocated(self) -> Plan | None:
        """The best colocated plan pdserve's engine runs (chunked prefill)."""
        return deployable_colocated(self.colocated)

    @property
    def recommended(self) -> Plan:
        """What to deploy: the best disaggregated plan, or the best deployable colocated one."""
        if self.deployment == "colocated":
            plan = self.deployable_colocated
            assert plan is not None
            return plan
        assert self.best is not None
        return self.best

    @property
    def best_colocated(self) -> Plan | None:
        return self.colocated[0] if self.colocated else None

    def colocated_by_policy(self) -> dict[str, float]:
        """Best colocated goodput per GPU under each scheduling policy tried."""
        best: dict[str, float] = {}
        for o in self.outcomes:
            if o.task.phase == "colocated" and not (o.reason or "").startswith("skipped"):
                best[o.task.policy] = max(best.get(o.task.policy, 0.0), o.per_gpu)
        return best

    @property
    def gain(self) -> float | None:
        """Disaggregated over colocated goodput per GPU."""
        base = self.best_colocated
        if self.best is None or base is None or base.goodput_per_gpu <= 0:
            return None
        return self.best.goodput_per_gpu / base.goodput_per_gpu


def deployable_colocated(colocated: list[Plan]) -> Plan | None:
    """The first colocated plan with chunked prefill: prefill-first is only DistServe's baseline."""
    return next((p for p in colocated if p.policy == "chunked"), None)
