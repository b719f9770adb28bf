"""Renders helm/pdserve with Helm's own Go engine (helm-python-sdk, no helm binary) and hands the
tests the manifests as plain dicts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "helm" / "pdserve"
PLAN_VALUES = Path(__file__).resolve().parent / "plan-values.yaml"
COLOCATED_PLAN_VALUES = Path(__file__).resolve().parent / "colocated-plan-values.yaml"
RELEASE = "pdserve"
NAMESPACE = "llm"
WORKLOAD_KINDS = ("Deployment", "StatefulSet")


@dataclass
class Rendered:
    """One `helm template` of the chart: its manifests and its NOTES.txt."""

    manifests: list[dict[str, Any]]
    notes: str

    def all(self, kind: str) -> list[dict[str, Any]]:
        """Every manifest of one kind."""
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str, name: str) -> dict[str, Any]:
        """The manifest of this kind and name; fails the test when it is missing."""
        found = [m for m in self.all(kind) if m["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
        return found[0]

    def has(self, kind: str, name: str) -> bool:
        """Whether a manifest of this kind and name was rendered."""
        return any(m["metadata"]["name"] == name for m in self.all(kind))

    def pod_spec(self, workload: str) -> dict[str, Any]:
        """Pod spec of the Deployment or StatefulSet named `workload`."""
        for m in self.manifests:
            if m["kind"] in WORKLOAD_KINDS and m["metadata"]["name"] == workload:
                return m["spec"]["template"]["spec"]
        raise AssertionError(f"no workload named {workload}")

    def workloads(self) -> list[dict[str, Any]]:
        """Every Deployment and StatefulSet."""
        return [m for m in self.manifests if m["kind"] in WORKLOAD_KINDS]

    def container(self, workload: str, name: str | None = None) -> dict[str, Any]:
        """A serving container of a workload (the first one when no name is given)."""
        containers = self.pod_spec(workload)["containers"]
        if name is None:
            return containers[0]
        return next(c for c in containers if c["name"] == name)

    def engine_config(self) -> dict[str, str]:
        """Data of the engine ConfigMap the containers load as environment."""
        return self.one("ConfigMap", f"{RELEASE}-engine")["data"]


def load_values(path: Path) -> dict[str, Any]:
    """A values file as Helm's -f would read it."""
    return yaml.safe_load(path.read_text()) or {}


@pytest.fixture(scope="session")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart: helm.Chart) -> Callable[..., Rendered]:
    """`render(values)` renders a fresh install of the chart offline (lookup finds nothing)."""

    def _render(values: dict[str, Any] | None = None) -> Rendered:
        out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        manifests: list[dict[str, Any]] = []
        notes = ""
        for path, text in sorted(out.items()):
            if path.endswith("NOTES.txt"):
                notes = text
                continue
            manifests += [doc for doc in yaml.safe_load_all(text) if doc]
        return Rendered(manifests=manifests, notes=notes)

    return _render


# The values every chart-wide check runs against: defaults, both example files, a disaggregated
# and a colocated plan in the exact form `pdserve plan --out` writes, and every optional feature
# switched on (with all three worker pools).
VALUES_SETS: dict[str, dict[str, Any] | None] = {
    "default": None,
    "cpu": load_values(CHART_DIR / "values-cpu.yaml"),
    "gpu": load_values(CHART_DIR / "values-gpu.yaml"),
    "plan": load_values(PLAN_VALUES),
    "colocated-plan": load_values(COLOCATED_PLAN_VALUES),
    "everything": {
        "model": {
            "source": "huggingface",
            "name": "Qwen/Qwen2.5-7B-Instruct",
            "revision": "main",
            "huggingface": {"token": "hf_everything"},
        },
        "engine": {"maxModelLen": 4096},
        "prefill": {"replicas": 2, "maxNumBatchedTokens": 4096, "kvCacheMemoryGiB": 20.5,
                    "extraArgs": ["--some-flag"], "extraEnv": [{"name": "X", "value": "1"}]},
        "decode": {"replicas": 2, "maxNumSeqs": 128, "threads": 4,
                   "ports": {"http": 8101, "kv": 8201}},
        "colocated": {"replicas": 1, "tensorParallelSize": 2, "maxNumSeqs": 64,
                      "maxNumBatchedTokens": 512, "kvCacheMemoryGiB": 8, "threads": 2,
                      "ports": {"http": 8102}, "extraArgs": ["--log-level", "debug"],
                      "extraEnv": [{"name": "Y", "value": "2"}],
                      "podAnnotations": {"example.com/pool": "colocated"},
                      "terminationGracePeriodSeconds": 60},
        "placement": {"affinity": "low", "nodeSelector": {"pool": "gpu"},
                      "tolerations": [{"key": "gpu", "operator": "Exists"}]},
        "kvTransfer": {"ucx": {"tls": "rc,tcp", "netDevices": "mlx5_0:1"},
                       "rdma": {"enabled": True}, "hostNetwork": True},
        "router": {
            "replicas": 2,
            "maxQueuedRequests": 512,
            "service": {"type": "LoadBalancer"},
            "ingress": {"enabled": True, "className": "nginx", "host": "llm.example.com",
                        "tls": [{"secretName": "tls", "hosts": ["llm.example.com"]}]},
            "httpRoute": {"enabled": True, "parentRefs": [{"name": "public"}],
                          "hostnames": ["llm.example.com"], "timeouts": {"request": "0s"}},
        },
        "auth": {"apiKeys": ["sk-one", "sk-two"]},
        "networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "monitoring"}}}]},
        "metrics": {"serviceMonitor": {"enabled": True},
                    "grafanaDashboard": {"enabled": True}},
    },
}


@pytest.fixture(params=sorted(VALUES_SETS), scope="session")
def values_set(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any] | None]:
    """(name, values) of each entry of VALUES_SETS in turn."""
    return request.param, VALUES_SETS[request.param]


@pytest.fixture(scope="session")
def chart_dir() -> Path:
    return CHART_DIR


@pytest.fixture(scope="session")
def plan_values() -> dict[str, Any]:
    """tests/helm/plan-values.yaml: a plan exactly as `pdserve plan --out` writes it."""
    return load_values(PLAN_VALUES)


@pytest.fixture(scope="session")
def colocated_plan_values() -> dict[str, Any]:
    """tests/helm/colocated-plan-values.yaml: a colocated plan as `pdserve plan --out` writes it."""
    return load_values(COLOCATED_PLAN_VALUES)

