"""The chart renders, lints clean and produces manifests a Kubernetes 1.30 API server accepts,
for the defaults, both example values files, a planner-written plan and every option at once."""

from __future__ import annotations

import re

import helm_python as helm
import kubernetes_validate
import pytest

KUBE_VERSION = "1.30"
# Kinds defined by CRDs (Prometheus Operator, Gateway API): kubernetes-validate ships only the
# built-in schemas, so test_chart_exposure.py asserts their structure instead.
CRD_KINDS = {"ServiceMonitor", "HTTPRoute"}
# The worker pools each values set runs; the others run the prefill/decode pair.
POOLS = {"colocated-plan": ("colocated",), "everything": ("prefill", "decode", "colocated")}


def test_helm_lint_reports_no_warnings_or_errors(values_set, chart_dir):
    _, values = values_set
    report = helm.lint(chart_dir, values, strict=True, kube_version=f"v{KUBE_VERSION}.0")
    # Severity 1 is informational ("icon is recommended"); 2 is a warning, 3 an error.
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [] and report["errors"] == []


def test_every_manifest_validates_against_kubernetes_schemas_in_strict_mode(values_set, render):
    rendered = render(values_set[1])
    validated = 0
    for manifest in rendered.manifests:
        if manifest["kind"] in CRD_KINDS:
            continue
        name = f"{manifest['kind']}/{manifest['metadata']['name']}"
        try:
            kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            path = ".".join(str(p) for p in err.path)
            pytest.fail(f"{name} is invalid at {path}: {err.message}")
        validated += 1
    assert validated >= 12


def test_release_has_every_component_of_its_pools_and_nothing_of_the_others(values_set, render):
    name, values = values_set
    rendered = render(values)
    pools = POOLS.get(name, ("prefill", "decode"))
    for kind in ("Deployment", "Service"):
        assert rendered.has(kind, "pdserve-router")
    for role in ("prefill", "decode", "colocated"):
        for kind in ("Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"):
            assert rendered.has(kind, f"pdserve-{role}") == (role in pools), f"{kind} {role}"
    assert rendered.has("ConfigMap", "pdserve-engine")
    assert rendered.has("Secret", "pdserve")
    headless = [rendered.one("Service", f"pdserve-{role}") for role in pools]
    assert all(s["spec"]["clusterIP"] == "None" for s in headless)


def test_every_container_has_startup_readiness_and_liveness_probes(values_set, render):
    rendered = render(values_set[1])
    for workload in rendered.workloads():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            where = f"{workload['metadata']['name']}/{container['name']}"
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in container, f"{where} has no {probe}"
                http = container[probe].get("httpGet")
                if http:
                    port_names = {p["name"] for p in container["ports"]}
                    assert http["port"] in port_names, f"{where} {probe} probes an unknown port"


def test_worker_startup_budget_covers_minutes_of_model_loading(render):
    for role in ("prefill", "decode"):
        probe = render().container(f"pdserve-{role}")["startupProbe"]
        assert probe["httpGet"]["path"] == "/health"
        assert probe["periodSeconds"] * probe["failureThreshold"] >= 20 * 60


def test_router_liveness_does_not_depend_on_workers(render):
    # /health is 503 until a prefill and a decode worker are live: fine for readiness, but a
    # liveness probe on it would restart the router in a loop while workers load.
    router = render().container("pdserve-router")
    assert router["readinessProbe"]["httpGet"]["path"] == "/health"
    assert router["livenessProbe"]["httpGet"]["path"] != "/health"
    assert router["startupProbe"]["httpGet"]["path"] != "/health"


def test_every_argument_variable_is_defined_in_the_container_environment(values_set, render):
    # The kubelet leaves an undefined $(VAR) in the arguments as literal text.
    rendered = render(values_set[1])
    config = rendered.engine_config()
    for workload in rendered.workloads():
        spec = workload["spec"]["template"]["spec"]
        for container in spec["containers"] + spec.get("initContainers", []):
            defined = {e["name"] for e in container.get("env", [])}
            if any("configMapRef" in s for s in container.get("envFrom", [])):
                defined |= set(config)
            text = " ".join(container.get("args", []) + container.get("command", []))
            text += " ".join(e.get("value", "") for e in container.get("env", []))
            used = set(re.findall(r"\$\(([A-Z0-9_]+)\)", text))
            assert used <= defined, f"{container['name']} uses undefined {used - defined}"


def test_workers_follow_the_command_line_contract(render, plan_values):
    rendered = render(plan_values)
    config = rendered.engine_config()
    for role, tp in (("prefill", 4), ("decode", 2)):
        container = rendered.container(f"pdserve-{role}")
        args = container["args"]
        assert args[0] == role
        flags = dict(zip(args[1::2], args[2::2], strict=False))
        assert flags["--host"] == "0.0.0.0"
        assert flags["--port"] == "8100"
        assert flags["--kv-port"] == "8200"
        assert flags["--advertise-host"] == "$(POD_IP)"
        assert flags["--tensor-parallel-size"] == str(tp)
        assert flags["--model"] == "$(ENGINE_MODEL)"
        assert config["ENGINE_MODEL"] == "/models/facebook/opt-66b"
        assert config["ENGINE_SERVED_MODEL_NAME"] == "facebook/opt-66b"
        assert config["ENGINE_KV_BACKEND"] == "ucx"
        assert config["ENGINE_DEVICE"] == "cuda"
        pod_ip = next(e for e in container["env"] if e["name"] == "POD_IP")
        assert pod_ip["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        registry = next(e for e in container["env"] if e["name"] == "PDSERVE_REGISTRY")
        assert registry["value"] == "redis://:$(REDIS_PASSWORD)@pdserve-redis:6379/0"


def test_router_follows_the_command_line_contract(render):
    rendered = render({"router": {"maxQueuedRequests": 64}, "engine": {"maxModelLen": 2048}})
    args = rendered.container("pdserve-router")["args"]
    assert args[0] == "router"
    flags = dict(zip(args[1::2], args[2::2], strict=False))
    assert flags["--host"] == "0.0.0.0"
    assert flags["--port"] == "8000"
    assert flags["--max-queued-requests"] == "64"
    assert flags["--max-model-len"] == "$(ENGINE_MAX_MODEL_LEN)"
    assert rendered.engine_config()["ENGINE_MAX_MODEL_LEN"] == "2048"
    service = rendered.one("Service", "pdserve-router")
    assert service["spec"]["ports"][0]["port"] == 8000


def test_containers_run_non_root_on_a_read_only_root_filesystem(values_set, render):
    rendered = render(values_set[1])
    for workload in rendered.workloads():
        spec = workload["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"] + spec.get("initContainers", []):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert set(context["capabilities"].get("add", [])) <= {"IPC_LOCK"}
    pdserve = [w["metadata"]["name"] for w in rendered.workloads()
               if w["metadata"]["name"] != "pdserve-redis"]
    for name in pdserve:
        mounts = {m["mountPath"] for m in rendered.container(name)["volumeMounts"]}
        assert "/tmp" in mounts, f"{name} has nothing writable for caches"


def test_workers_get_a_memory_backed_shared_memory_volume(render):
    for role in ("prefill", "decode"):
        spec = render().pod_spec(f"pdserve-{role}")
        shm = next(v for v in spec["volumes"] if v["name"] == "shm")
        assert shm["emptyDir"]["medium"] == "Memory"
        mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        assert mounts["shm"] == "/dev/shm"


def test_pod_disruption_budgets_cover_each_pool(render, colocated_plan_values):
    rendered = render(colocated_plan_values)
    for role in ("router", "colocated"):
        budget = rendered.one("PodDisruptionBudget", f"pdserve-{role}")
        assert budget["spec"]["maxUnavailable"] == 1
        labels = rendered.one("Deployment", f"pdserve-{role}")["spec"]["template"]["metadata"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels["labels"].items()
    # An empty pool needs no budget.
    assert not rendered.has("PodDisruptionBudget", "pdserve-prefill")
    assert not rendered.has("PodDisruptionBudget", "pdserve-decode")


def test_engine_config_change_rolls_the_pods(render):
    before = render().one("Deployment", "pdserve-decode")
    after = render({"engine": {"dtype": "float16"}}).one("Deployment", "pdserve-decode")
    key = "checksum/engine-config"
    annotations = (before["spec"]["template"]["metadata"]["annotations"],
                   after["spec"]["template"]["metadata"]["annotations"])
    assert annotations[0][key] != annotations[1][key]


def test_labels_follow_kubernetes_recommended_labels(values_set, render):
    for manifest in render(values_set[1]).manifests:
        labels = manifest["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "pdserve"
        assert labels["app.kubernetes.io/instance"] == "pdserve"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "pdserve-0.2.0"


def test_notes_tell_the_user_how_to_reach_and_check_the_endpoint(render, plan_values):
    notes = render(plan_values).notes
    assert "kubectl -n llm port-forward svc/pdserve-router 8000:8000" in notes
    assert "$PDSERVE_URL/health" in notes
    assert '"model": "facebook/opt-66b"' in notes
    assert "prefill   2 pod(s) x 4 nvidia.com/gpu" in notes
    assert "decode    3 pod(s) x 2 nvidia.com/gpu" in notes
    assert "colocated" not in notes
    exposed = render({"router": {"ingress": {"enabled": True, "host": "llm.example.com"}}}).notes
    assert "export PDSERVE_URL=http://llm.example.com" in exposed
    assert "without API keys" in exposed


def test_packaged_chart_renders_the_same_manifests(chart_dir, tmp_path):
    # `helm package` applies .helmignore: nothing the templates read may be left out.
    archive = helm.package(chart_dir, destination=tmp_path)
    values = {"metrics": {"grafanaDashboard": {"enabled": True}}, "auth": {"internalToken": "t"},
              "redis": {"password": "p"}}
    with helm.Chart.load(archive) as packaged, helm.Chart.load(chart_dir) as source:
        assert packaged.render(values, name="pdserve") == source.render(values, name="pdserve")
        assert packaged.metadata["version"] == "0.2.0"
