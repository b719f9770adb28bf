"""Credentials: API keys, the internal token, the Redis password and the Hugging Face token live
only in Secrets, reach containers only through secretKeyRef, and generated ones survive
`helm upgrade` (Helm's lookup reads them back from the live Secret)."""

from __future__ import annotations

import base64
import json

import helm_python as helm
import yaml
from fake_kube_api import FakeKubeAPI

# Environment variables that carry a credential.
SECRET_ENV = {"PDSERVE_INTERNAL_TOKEN", "PDSERVE_API_KEYS", "REDIS_PASSWORD", "REDISCLI_AUTH",
              "HF_TOKEN"}
SECRETS = {
    "api keys": ["sk-alpha-2c5e8f", "sk-bravo-9d1a7b"],
    "internal token": "internal-token-5f2b9c1e7a",
    "redis password": "redis-pass-8e3d0c",
    "hf token": "hf_token_4a7c9e2b1d",
}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret_data(rendered) -> dict[str, str]:
    data = rendered.one("Secret", "pdserve")["data"]
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def every_container(rendered):
    for workload in rendered.workloads():
        spec = workload["spec"]["template"]["spec"]
        yield from spec["containers"] + spec.get("initContainers", [])


def with_all_secrets() -> dict:
    return {
        "auth": {"apiKeys": SECRETS["api keys"], "internalToken": SECRETS["internal token"]},
        "redis": {"password": SECRETS["redis password"]},
        "model": {"source": "huggingface", "name": "org/model",
                  "huggingface": {"token": SECRETS["hf token"]}},
    }


def test_secret_values_appear_only_in_the_secret(render):
    rendered = render(with_all_secrets())
    values = SECRETS["api keys"] + [SECRETS["internal token"], SECRETS["redis password"],
                                     SECRETS["hf token"]]
    for manifest in rendered.manifests:
        if manifest["kind"] == "Secret":
            continue
        text = json.dumps(manifest)
        for value in values:
            assert value not in text and b64(value) not in text, (
                f"{manifest['kind']}/{manifest['metadata']['name']} leaks a secret")
    for value in values:
        assert value not in rendered.notes
    data = secret_data(rendered)
    assert data["api-keys"] == ",".join(SECRETS["api keys"])
    assert data["internal-token"] == SECRETS["internal token"]
    assert data["redis-password"] == SECRETS["redis password"]
    assert data["hf-token"] == SECRETS["hf token"]


def test_credentials_reach_containers_only_through_secret_key_refs(values_set, render):
    rendered = render(values_set[1])
    config_map_keys = set(rendered.engine_config())
    assert not config_map_keys & SECRET_ENV
    secret_keys = set(rendered.one("Secret", "pdserve")["data"])
    for container in every_container(rendered):
        for env in container.get("env", []):
            if env["name"] in SECRET_ENV:
                ref = env["valueFrom"]["secretKeyRef"]
                if ref["name"] == "pdserve" and not ref.get("optional"):
                    assert ref["key"] in secret_keys, f"{env['name']} names a missing key"
            elif env["name"] == "PDSERVE_REGISTRY" and "value" in env:
                # The Redis URL names the password; the kubelet fills it in at start.
                assert "$(REDIS_PASSWORD)" in env["value"]


def test_router_alone_gets_the_api_keys(render):
    rendered = render(with_all_secrets())
    for container in every_container(rendered):
        names = {e["name"] for e in container.get("env", [])}
        assert ("PDSERVE_API_KEYS" in names) == (container["name"] == "router")


def test_generated_credentials_are_strong_and_unique_per_install(render):
    first, second = secret_data(render()), secret_data(render())
    for key in ("internal-token", "redis-password"):
        assert len(first[key]) >= 32
        assert first[key] != second[key]
    assert "api-keys" not in first


def test_upgrade_keeps_the_generated_credentials(chart):
    with FakeKubeAPI() as api, helm.Config(kubeconfig_content=api.kubeconfig,
                                           namespace="llm") as cluster:
        install = cluster.render(chart, None, name="pdserve", namespace="llm", is_install=True)
        installed = yaml.safe_load(install["pdserve/templates/secret.yaml"])
        assert "/api/v1/namespaces/llm/secrets/pdserve" in api.requests

        api.secrets["llm", "pdserve"] = installed
        upgrade = cluster.render(chart, {"prefill": {"replicas": 4}}, name="pdserve",
                                 namespace="llm", is_upgrade=True)
        upgraded = yaml.safe_load(upgrade["pdserve/templates/secret.yaml"])
    assert upgraded["data"]["internal-token"] == installed["data"]["internal-token"]
    assert upgraded["data"]["redis-password"] == installed["data"]["redis-password"]


def test_explicit_token_wins_over_the_live_one(chart):
    with FakeKubeAPI() as api, helm.Config(kubeconfig_content=api.kubeconfig,
                                           namespace="llm") as cluster:
        api.secrets["llm", "pdserve"] = {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pdserve"},
            "data": {"internal-token": b64("old-token"), "redis-password": b64("old-pass")}}
        out = cluster.render(chart, {"auth": {"internalToken": "rotated-token"}},
                             name="pdserve", namespace="llm", is_upgrade=True)
    data = yaml.safe_load(out["pdserve/templates/secret.yaml"])["data"]
    assert base64.b64decode(data["internal-token"]).decode() == "rotated-token"
    assert base64.b64decode(data["redis-password"]).decode() == "old-pass"


def test_existing_auth_secret_replaces_the_chart_credentials(render):
    rendered = render({"auth": {"existingSecret": "pdserve-auth", "apiKeys": ["ignored"]}})
    data = secret_data(rendered)
    assert "internal-token" not in data and "api-keys" not in data
    router = rendered.container("pdserve-router")
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in router["env"]
            if e["name"] in SECRET_ENV}
    assert refs["PDSERVE_INTERNAL_TOKEN"] == {"name": "pdserve-auth", "key": "internal-token"}
    assert refs["PDSERVE_API_KEYS"]["name"] == "pdserve-auth"
    assert refs["PDSERVE_API_KEYS"]["optional"] is True


def test_external_redis_url_is_a_secret(render):
    url = "redis://:hunter2@redis.example.com:6379/3"
    rendered = render({"redis": {"enabled": False, "external": {"url": url}}})
    assert not rendered.all("StatefulSet")
    assert secret_data(rendered)["registry-url"] == url
    for manifest in rendered.manifests:
        if manifest["kind"] != "Secret":
            assert "hunter2" not in json.dumps(manifest)
    registry = next(e for e in rendered.container("pdserve-decode")["env"]
                    if e["name"] == "PDSERVE_REGISTRY")
    assert registry["valueFrom"]["secretKeyRef"] == {"name": "pdserve", "key": "registry-url"}
