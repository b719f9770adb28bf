"""The colocated pool: a plan that recommends both-role workers (`pdserve worker --role both`)
installs as planned, alone or beside the prefill/decode pair, and pools the router cannot serve
with fail at install with the fix in the message."""

from __future__ import annotations

import helm_python as helm
import pytest

GPU = "nvidia.com/gpu"
PAIR_AT_ZERO = {"prefill": {"replicas": 0}, "decode": {"replicas": 0}}


def flags(args: list[str]) -> dict[str, str]:
    """--flag value pairs of a worker command line (after the subcommand and its role)."""
    start = next(i for i, a in enumerate(args) if a == "--model")
    return dict(zip(args[start::2], args[start + 1::2], strict=False))


def env_names(container: dict) -> set[str]:
    return {e["name"] for e in container["env"]}


def test_colocated_plan_runs_only_the_planned_colocated_pool(render, colocated_plan_values):
    rendered = render(colocated_plan_values)
    workers = [w for w in rendered.all("Deployment") if w["metadata"]["name"] != "pdserve-router"]
    assert [w["metadata"]["name"] for w in workers] == ["pdserve-colocated"]
    (deployment,) = workers
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "colocated"
    container = pod["spec"]["containers"][0]
    assert container["args"][:3] == ["worker", "--role", "both"]
    assert container["resources"]["requests"][GPU] == 2
    assert container["resources"]["limits"][GPU] == 2
    given = flags(container["args"])
    assert given["--tensor-parallel-size"] == "2"
    assert given["--max-num-batched-tokens"] == "512"
    assert given["--advertise-host"] == "$(POD_IP)"
    # Nothing pulls KV from a both-role worker: no KV listener flag, port or Service port.
    assert "--kv-port" not in given
    assert [p["name"] for p in container["ports"]] == ["http"]
    service = rendered.one("Service", "pdserve-colocated")
    assert [p["name"] for p in service["spec"]["ports"]] == ["http"]
    assert rendered.engine_config()["ENGINE_MODEL"] == "/models/facebook/opt-13b"


def test_colocated_plan_lints_clean(chart_dir, colocated_plan_values):
    report = helm.lint(chart_dir, colocated_plan_values, strict=True, kube_version="v1.30.0")
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_colocated_workers_get_the_same_wiring_as_the_pair(render):
    rendered = render({"colocated": {"replicas": 1},
                       "model": {"source": "huggingface", "name": "org/model"}})
    colocated, decode = rendered.pod_spec("pdserve-colocated"), rendered.pod_spec("pdserve-decode")
    for key in ("serviceAccountName", "securityContext", "volumes", "initContainers"):
        assert colocated[key] == decode[key], key
    mine, theirs = colocated["containers"][0], decode["containers"][0]
    for key in ("image", "envFrom", "env", "volumeMounts", "startupProbe", "readinessProbe",
                "livenessProbe", "securityContext"):
        assert mine[key] == theirs[key], key
    assert {"PDSERVE_INTERNAL_TOKEN", "PDSERVE_REGISTRY", "POD_IP"} <= env_names(mine)
    # The engine flags differ only where a prefill/decode worker has a KV listener.
    theirs_flags = flags(theirs["args"])
    del theirs_flags["--kv-port"]
    assert flags(mine["args"]) == theirs_flags


def test_colocated_pool_leaves_the_kv_transfer_settings_to_the_pair(render):
    rendered = render({"colocated": {"replicas": 1},
                       "kvTransfer": {"hostNetwork": True, "rdma": {"enabled": True}}})
    spec = rendered.pod_spec("pdserve-colocated")
    assert "hostNetwork" not in spec
    container = spec["containers"][0]
    assert "rdma/rdma_shared_device_a" not in container["resources"]["limits"]
    assert "add" not in container["securityContext"]["capabilities"]
    # The pair keeps them.
    assert rendered.pod_spec("pdserve-decode")["hostNetwork"] is True


def test_colocated_pool_runs_on_cpu_with_the_tcp_backend(render):
    rendered = render({"gpu": {"enabled": False}, "kvTransfer": {"backend": "tcp"},
                       **PAIR_AT_ZERO, "colocated": {"replicas": 2, "threads": 2}})
    container = rendered.container("pdserve-colocated")
    assert not any("gpu" in name for name in container["resources"].get("limits", {}))
    given = flags(container["args"])
    assert given["--threads"] == "2"
    # The worker checks its KV backend at start whatever its role, and the CPU image has no UCX.
    assert given["--kv-backend"] == "$(ENGINE_KV_BACKEND)"
    assert rendered.engine_config()["ENGINE_KV_BACKEND"] == "tcp"


def test_colocated_pool_beside_the_pair_is_allowed(render):
    rendered = render({"colocated": {"replicas": 2}})
    for role in ("prefill", "decode", "colocated"):
        assert rendered.has("Deployment", f"pdserve-{role}")
    assert rendered.one("Deployment", "pdserve-colocated")["spec"]["replicas"] == 2
    assert "While the prefill/decode pair is live" in rendered.notes


def test_default_values_run_the_pair_and_nothing_colocated(render):
    rendered = render()
    for role in ("prefill", "decode"):
        assert rendered.one("Deployment", f"pdserve-{role}")["spec"]["replicas"] == 1
    components = {m["metadata"]["labels"].get("app.kubernetes.io/component")
                  for m in rendered.manifests}
    assert "colocated" not in components
    assert "colocated" not in rendered.notes


def test_notes_list_the_colocated_pool_and_when_the_router_is_ready(render,
                                                                   colocated_plan_values):
    notes = render(colocated_plan_values).notes
    assert "colocated 3 pod(s) x 2 nvidia.com/gpu" in notes
    assert "\n  prefill" not in notes and "\n  placement" not in notes
    assert "at least one colocated worker" in notes


REFUSED = {
    "prefill without decode": (
        {"decode": {"replicas": 0}},
        "prefill and decode run as a pair: prefill.replicas is 1 but decode.replicas is 0"),
    "decode without prefill": (
        {"prefill": {"replicas": 0}, "decode": {"replicas": 2}},
        "prefill and decode run as a pair: decode.replicas is 2 but prefill.replicas is 0"),
    "half a pair beside colocated": (
        {"decode": {"replicas": 0}, "colocated": {"replicas": 1}},
        "Set decode.replicas to 1 or more, or set prefill.replicas to 0"),
    "no workers": (
        PAIR_AT_ZERO,
        "no workers: prefill.replicas, decode.replicas and colocated.replicas are all 0"),
}


@pytest.mark.parametrize("values,message", REFUSED.values(), ids=REFUSED.keys())
def test_pools_the_router_cannot_serve_fail_with_the_fix(chart, values, message):
    # Schema-valid values: replicas 0 is allowed for every pool on its own.
    chart.validate_schema(values)
    with pytest.raises(helm.HelmRenderError) as refused:
        chart.render(values, name="pdserve", namespace="llm", is_install=True)
    assert message in str(refused.value)
