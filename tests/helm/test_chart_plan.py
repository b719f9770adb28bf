"""Plan to deployment: the values `pdserve plan --out` writes install as they are, and the
chart deploys exactly the planned replicas, GPUs per pod and placement."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

GPU = "nvidia.com/gpu"


def run_plan(out: Path, *flags: str) -> dict:
    """`pdserve plan` on DistServe's A100-80GB latency fit (OPT-13B, 2 nodes of 8 GPUs)."""
    command = [
        sys.executable, "-m", "services.cli", "plan",
        "--model", "facebook/opt-13b", "--gpu", "a100-80g-sxm",
        "--nodes", "2", "--gpus-per-node", "8",
        "--workload", "synthetic:in=755,out=187,in_cv=0.7,out_cv=1.2",
        "--ttft", "0.25", "--tpot", "0.1",
        "--latency-model", "distserve",
        "--num-requests", "100", "--workers", "1",
        "--out", str(out), *flags,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(out.read_text())


def install(chart_dir: Path, render, plan: dict):
    """The plan's values through strict lint and Kubernetes 1.30's schemas; the rendering."""
    report = helm.lint(chart_dir, plan, strict=True, kube_version="v1.30.0")
    assert [m for m in report["messages"] if m["severity"] >= 2] == []
    rendered = render(plan)
    for manifest in rendered.manifests:
        if manifest["kind"] not in ("ServiceMonitor", "HTTPRoute"):
            kubernetes_validate.validate(manifest, "1.30", strict=True)
    return rendered


@pytest.mark.parametrize("affinity", ["low", "high"])
def test_planned_values_deploy_exactly_the_plan(tmp_path, chart_dir, render, affinity):
    plan = run_plan(tmp_path / "plan-values.yaml", "--affinity", affinity,
                    "--deployment", "disaggregated")
    assert plan["placement"]["affinity"] == affinity
    assert plan["model"] == {"source": "huggingface", "name": "facebook/opt-13b"}

    rendered = install(chart_dir, render, plan)
    for role in ("prefill", "decode"):
        deployment = rendered.one("Deployment", f"pdserve-{role}")
        assert deployment["spec"]["replicas"] == plan[role]["replicas"]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        tp = plan[role]["tensorParallelSize"]
        assert container["resources"]["limits"][GPU] == tp
        assert container["resources"]["requests"][GPU] == tp
        args = container["args"]
        assert args[args.index("--tensor-parallel-size") + 1] == str(tp)

    decode_affinity = rendered.pod_spec("pdserve-decode")["affinity"]
    assert ("podAffinity" in decode_affinity) == (affinity == "low")
    assert rendered.engine_config()["ENGINE_MODEL"] == "/models/facebook/opt-13b"


def test_a_planned_colocated_deployment_installs_as_planned(tmp_path, chart_dir, render):
    # For these SLOs the planner finds chunked-prefill workers ahead and writes only them.
    plan = run_plan(tmp_path / "plan-values.yaml")
    assert plan["prefill"] == {"replicas": 0} and plan["decode"] == {"replicas": 0}

    rendered = install(chart_dir, render, plan)
    workers = [m["metadata"]["name"] for m in rendered.manifests if m["kind"] == "Deployment"
               and m["metadata"]["name"] != "pdserve-router"]
    assert workers == ["pdserve-colocated"]
    deployment = rendered.one("Deployment", "pdserve-colocated")
    assert deployment["spec"]["replicas"] == plan["colocated"]["replicas"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    tp = plan["colocated"]["tensorParallelSize"]
    assert container["resources"]["limits"][GPU] == tp
    args = container["args"]
    assert args[:3] == ["worker", "--role", "both"]
    assert args[args.index("--tensor-parallel-size") + 1] == str(tp)
    budget = str(plan["colocated"]["maxNumBatchedTokens"])
    assert args[args.index("--max-num-batched-tokens") + 1] == budget
