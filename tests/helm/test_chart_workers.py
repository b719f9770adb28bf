"""The prefill and decode pools: planned replicas, one GPU per tensor-parallel shard, the model
source, CPU mode and the RDMA knobs (test_chart_colocated.py covers the colocated pool)."""

from __future__ import annotations

import helm_python as helm
import pytest
import yaml


def gpu_request(container: dict, resource: str = "nvidia.com/gpu") -> tuple[int, int]:
    resources = container["resources"]
    return int(resources["requests"][resource]), int(resources["limits"][resource])


def test_replicas_and_gpu_requests_follow_the_plan(render, plan_values):
    rendered = render(plan_values)
    for role in ("prefill", "decode"):
        planned = plan_values[role]
        deployment = rendered.one("Deployment", f"pdserve-{role}")
        assert deployment["spec"]["replicas"] == planned["replicas"]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        tp = planned["tensorParallelSize"]
        assert gpu_request(container) == (tp, tp)


@pytest.mark.parametrize("tp", [1, 2, 8])
def test_gpus_requested_equal_tensor_parallel_size(render, tp):
    rendered = render({"prefill": {"tensorParallelSize": tp}, "decode": {"tensorParallelSize": tp}})
    for role in ("prefill", "decode"):
        container = rendered.container(f"pdserve-{role}")
        assert gpu_request(container) == (tp, tp)
        args = container["args"]
        assert args[args.index("--tensor-parallel-size") + 1] == str(tp)


def test_gpu_resource_name_is_configurable(render):
    rendered = render({"gpu": {"resourceName": "nvidia.com/mig-3g.40gb"},
                       "decode": {"tensorParallelSize": 2}})
    container = rendered.container("pdserve-decode")
    assert gpu_request(container, "nvidia.com/mig-3g.40gb") == (2, 2)
    assert "nvidia.com/gpu" not in container["resources"]["limits"]


def test_a_pool_at_zero_replicas_renders_nothing(render):
    rendered = render({"prefill": {"replicas": 0}, "decode": {"replicas": 0},
                       "colocated": {"replicas": 1}})
    for role in ("prefill", "decode"):
        name = f"pdserve-{role}"
        named = [m["kind"] for m in rendered.manifests if m["metadata"]["name"] == name]
        assert named == [], f"{role} at 0 replicas still renders {named}"


def test_cpu_values_request_no_gpu_and_run_the_builtin_model_on_cpu(render, chart_dir):
    rendered = render(yaml.safe_load((chart_dir / "values-cpu.yaml").read_text()))
    config = rendered.engine_config()
    assert config["ENGINE_DEVICE"] == "cpu"
    assert config["ENGINE_MODEL"] == "smollm2"
    assert config["ENGINE_KV_BACKEND"] == "tcp"
    for workload in rendered.workloads():
        spec = workload["spec"]["template"]["spec"]
        assert "initContainers" not in spec, "the built-in model needs no download"
        for container in spec["containers"]:
            resources = container.get("resources", {})
            names = set(resources.get("requests", {})) | set(resources.get("limits", {}))
            assert not any("gpu" in n for n in names), f"{container['name']} requests a GPU"
            if workload["metadata"]["name"] != "pdserve-redis":
                assert container["image"] == "pdserve:0.1.0-cpu"
    for role in ("prefill", "decode"):
        args = rendered.container(f"pdserve-{role}")["args"]
        assert args[args.index("--threads") + 1] == "2"


def test_huggingface_model_is_downloaded_by_an_init_container(render):
    rendered = render({"model": {"source": "huggingface", "name": "Qwen/Qwen2.5-7B-Instruct",
                                 "revision": "v1", "huggingface": {"existingSecret": "hf"}}})
    config = rendered.engine_config()
    assert config["ENGINE_MODEL"] == "/models/Qwen/Qwen2.5-7B-Instruct"
    assert config["ENGINE_SERVED_MODEL_NAME"] == "Qwen/Qwen2.5-7B-Instruct"
    assert config["HF_HUB_OFFLINE"] == "1"
    for name in ("pdserve-prefill", "pdserve-decode", "pdserve-router"):
        spec = rendered.pod_spec(name)
        (init,) = spec["initContainers"]
        command = init["command"]
        assert command[:3] == ["hf", "download", "Qwen/Qwen2.5-7B-Instruct"]
        assert command[command.index("--local-dir") + 1] == "/models/Qwen/Qwen2.5-7B-Instruct"
        assert command[command.index("--revision") + 1] == "v1"
        token = next(e for e in init["env"] if e["name"] == "HF_TOKEN")
        assert token["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
        writable = {m["name"] for m in init["volumeMounts"] if not m.get("readOnly")}
        assert "models" in writable
        serving = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
        assert serving["models"]["mountPath"] == "/models" and serving["models"]["readOnly"]
        volume = next(v for v in spec["volumes"] if v["name"] == "models")
        assert "emptyDir" in volume
        # The router only tokenizes: it fetches tokenizer and config files, not the weights.
        includes = [command[i + 1] for i, a in enumerate(command) if a == "--include"]
        assert ("*.json" in includes) == (name == "pdserve-router")


def test_shared_model_cache_claim_replaces_the_per_pod_cache(render):
    rendered = render({"model": {"source": "huggingface", "name": "org/model",
                                 "cache": {"existingClaim": "model-cache"}}})
    volumes = rendered.pod_spec("pdserve-decode")["volumes"]
    volume = next(v for v in volumes if v["name"] == "models")
    assert volume["persistentVolumeClaim"]["claimName"] == "model-cache"


def test_pvc_model_is_mounted_read_only(render):
    rendered = render({"model": {"source": "pvc", "pvc": {"claimName": "weights",
                                                            "path": "llama-3-8b"}}})
    config = rendered.engine_config()
    assert config["ENGINE_MODEL"] == "/models/llama-3-8b"
    assert config["ENGINE_SERVED_MODEL_NAME"] == "llama-3-8b"
    spec = rendered.pod_spec("pdserve-prefill")
    assert "initContainers" not in spec
    volume = next(v for v in spec["volumes"] if v["name"] == "models")
    assert volume["persistentVolumeClaim"] == {"claimName": "weights", "readOnly": True}


def test_served_model_name_override(render):
    config = render({"model": {"servedModelName": "chat"}}).engine_config()
    assert config["ENGINE_SERVED_MODEL_NAME"] == "chat"


def test_rdma_requests_the_device_and_ipc_lock_and_passes_ucx_settings(render):
    rendered = render({"kvTransfer": {
        "ucx": {"tls": "rc,cuda_copy", "netDevices": "mlx5_0:1", "tcpPortRange": "21000-21010"},
        "rdma": {"enabled": True, "resourceName": "rdma/ib", "count": 2},
    }})
    config = rendered.engine_config()
    assert config["UCX_TLS"] == "rc,cuda_copy"
    assert config["UCX_NET_DEVICES"] == "mlx5_0:1"
    assert config["UCX_TCP_PORT_RANGE"] == "21000-21010"
    for role in ("prefill", "decode"):
        container = rendered.container(f"pdserve-{role}")
        assert gpu_request(container, "rdma/ib") == (2, 2)
        assert container["securityContext"]["capabilities"]["add"] == ["IPC_LOCK"]
        assert any(s["configMapRef"]["name"] == "pdserve-engine" for s in container["envFrom"])
    router = rendered.container("pdserve-router")
    assert "add" not in router["securityContext"]["capabilities"]


def test_tcp_backend_carries_no_ucx_settings(render):
    config = render({"kvTransfer": {"backend": "tcp", "ucx": {"tls": "rc"}}}).engine_config()
    assert config["ENGINE_KV_BACKEND"] == "tcp"
    assert not any(key.startswith("UCX_") for key in config)


def test_host_network_with_co_located_pools_needs_distinct_ports(chart, render):
    clash = {"kvTransfer": {"hostNetwork": True}, "placement": {"affinity": "low"}}
    with pytest.raises(helm.HelmRenderError, match="decode.ports"):
        chart.render(clash, name="pdserve")
    clash["decode"] = {"ports": {"http": 8101, "kv": 8201}}
    assert render(clash).container("pdserve-decode")["ports"][1]["containerPort"] == 8201


def test_host_network_keeps_cluster_dns(render):
    rendered = render({"kvTransfer": {"hostNetwork": True}})
    for role in ("prefill", "decode"):
        spec = rendered.pod_spec(f"pdserve-{role}")
        assert spec["hostNetwork"] is True
        assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert "hostNetwork" not in rendered.pod_spec("pdserve-router")


def test_per_role_engine_limits_reach_the_command_line(render):
    rendered = render({"prefill": {"maxNumBatchedTokens": 8192, "kvCacheMemoryGiB": 30},
                       "decode": {"maxNumSeqs": 256}})
    prefill = rendered.container("pdserve-prefill")["args"]
    decode = rendered.container("pdserve-decode")["args"]
    assert prefill[prefill.index("--max-num-batched-tokens") + 1] == "8192"
    assert prefill[prefill.index("--kv-cache-memory") + 1] == "30"
    assert decode[decode.index("--max-num-seqs") + 1] == "256"
    assert "--max-num-seqs" not in prefill


def test_image_tag_follows_the_device(render):
    assert render().container("pdserve-decode")["image"] == "pdserve:0.1.0-cuda"
    cpu = render({"gpu": {"enabled": False}}).container("pdserve-decode")
    assert cpu["image"] == "pdserve:0.1.0-cpu"
    pinned = render({"image": {"repository": "r.example/pdserve", "tag": "abc"}})
    assert pinned.container("pdserve-router")["image"] == "r.example/pdserve:abc"
