"""NetworkPolicy: only the router is reachable from outside; worker HTTP ports (every pool) only
from the router; KV ports only between prefill and decode, never to or from colocated workers;
Redis only from the release's pdserve pods.
Connections are judged by fake_cni, which applies the documented NetworkPolicy semantics."""

from __future__ import annotations

import pytest
from fake_cni import Pod, allows

ROUTER, WORKER_HTTP, KV, REDIS = 8000, 8100, 8200, 6379


def pods_of(rendered) -> dict[str, Pod]:
    """The release's pods, as the API server would create them from the workloads."""
    pods = {}
    for workload in rendered.workloads():
        template = workload["spec"]["template"]
        ports = {p["name"]: p["containerPort"] for c in template["spec"]["containers"]
                 for p in c.get("ports", [])}
        component = template["metadata"]["labels"]["app.kubernetes.io/component"]
        pods[component] = Pod(name=component, labels=template["metadata"]["labels"], ports=ports)
    return pods


def other_release_pod(component: str) -> Pod:
    return Pod(name=f"other-{component}", labels={
        "app.kubernetes.io/name": "pdserve", "app.kubernetes.io/instance": "other",
        "app.kubernetes.io/component": component})


@pytest.fixture
def cluster(render):
    rendered = render()
    return rendered.all("NetworkPolicy"), pods_of(rendered)


def test_every_pod_of_the_release_is_isolated(cluster):
    policies, pods = cluster
    stranger = Pod(name="stranger", labels={"app": "anything"})
    for pod in pods.values():
        assert not allows(policies, stranger, pod, 12345), f"{pod.name} accepts anything"


def test_only_the_router_is_reachable_from_outside(cluster):
    policies, pods = cluster
    stranger = Pod(name="stranger", labels={"app": "anything"}, namespace="elsewhere")
    for source in (None, stranger):
        assert allows(policies, source, pods["router"], ROUTER)
        for role in ("prefill", "decode"):
            assert not allows(policies, source, pods[role], WORKER_HTTP)
            assert not allows(policies, source, pods[role], KV)
        assert not allows(policies, source, pods["redis"], REDIS)


def test_worker_http_port_accepts_only_the_router(cluster):
    policies, pods = cluster
    for role in ("prefill", "decode"):
        assert allows(policies, pods["router"], pods[role], WORKER_HTTP)
        assert not allows(policies, pods["router"], pods[role], KV)
        for source in ("prefill", "decode", "redis"):
            assert not allows(policies, pods[source], pods[role], WORKER_HTTP)
        assert not allows(policies, other_release_pod("router"), pods[role], WORKER_HTTP)


def test_kv_port_is_open_only_between_prefill_and_decode(cluster):
    policies, pods = cluster
    assert allows(policies, pods["decode"], pods["prefill"], KV)
    assert allows(policies, pods["prefill"], pods["decode"], KV)
    assert not allows(policies, pods["prefill"], pods["prefill"], KV)
    assert not allows(policies, pods["decode"], pods["decode"], KV)
    assert not allows(policies, other_release_pod("decode"), pods["prefill"], KV)


def test_ucx_tcp_port_range_is_open_only_between_prefill_and_decode(cluster, render):
    policies, pods = cluster
    config = render().engine_config()
    first, last = (int(p) for p in config["UCX_TCP_PORT_RANGE"].split("-"))
    for port in (first, last):
        assert allows(policies, pods["decode"], pods["prefill"], port)
        assert allows(policies, pods["prefill"], pods["decode"], port)
        assert not allows(policies, pods["router"], pods["prefill"], port)
    assert not allows(policies, pods["decode"], pods["prefill"], last + 1)


def test_tcp_backend_opens_no_port_range(render):
    rendered = render({"kvTransfer": {"backend": "tcp"}})
    policies, pods = rendered.all("NetworkPolicy"), pods_of(rendered)
    assert allows(policies, pods["decode"], pods["prefill"], KV)
    assert not allows(policies, pods["decode"], pods["prefill"], 20000)


def test_redis_accepts_only_the_release_pdserve_pods(cluster):
    policies, pods = cluster
    for component in ("router", "prefill", "decode"):
        assert allows(policies, pods[component], pods["redis"], REDIS)
        assert not allows(policies, other_release_pod(component), pods["redis"], REDIS)


def test_custom_ports_are_the_ones_opened(render):
    rendered = render({"decode": {"ports": {"http": 9100, "kv": 9200}}})
    policies, pods = rendered.all("NetworkPolicy"), pods_of(rendered)
    assert allows(policies, pods["prefill"], pods["decode"], 9200)
    assert not allows(policies, pods["prefill"], pods["decode"], KV)
    assert allows(policies, pods["router"], pods["decode"], 9100)


def test_router_sources_can_be_restricted(render):
    ingress_controller = Pod(name="nginx", labels={"app": "ingress-nginx"}, namespace="ingress")
    rendered = render({"networkPolicy": {"routerFrom": [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "ingress"}}}]}})
    policies, pods = rendered.all("NetworkPolicy"), pods_of(rendered)
    assert allows(policies, ingress_controller, pods["router"], ROUTER)
    assert not allows(policies, None, pods["router"], ROUTER)


def test_metrics_scrapers_reach_worker_http_only_when_listed(render):
    prometheus = Pod(name="prometheus", labels={"app": "prometheus"}, namespace="monitoring")
    closed = render()
    assert not allows(closed.all("NetworkPolicy"), prometheus, pods_of(closed)["decode"],
                      WORKER_HTTP)
    opened = render({"networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}]}})
    policies, pods = opened.all("NetworkPolicy"), pods_of(opened)
    for role in ("prefill", "decode"):
        assert allows(policies, prometheus, pods[role], WORKER_HTTP)
        assert not allows(policies, prometheus, pods[role], KV)


def test_policies_can_be_switched_off(render):
    assert render({"networkPolicy": {"enabled": False}}).all("NetworkPolicy") == []


def test_every_kv_port_of_a_tensor_parallel_prefill_is_open_to_decode(render):
    """A TP=4 prefill pod listens on one KV port per rank (8200..8203)."""
    rendered = render({"prefill": {"tensorParallelSize": 4}})
    policies, pods = rendered.all("NetworkPolicy"), pods_of(rendered)
    for port in range(KV, KV + 4):
        assert allows(policies, pods["decode"], pods["prefill"], port)
        assert not allows(policies, pods["router"], pods["prefill"], port)
    assert not allows(policies, pods["decode"], pods["prefill"], KV + 4)


@pytest.fixture
def colocated_cluster(render, colocated_plan_values):
    rendered = render(colocated_plan_values)
    return rendered.all("NetworkPolicy"), pods_of(rendered)


def test_router_reaches_colocated_workers_and_nothing_else_does(colocated_cluster):
    policies, pods = colocated_cluster
    assert set(pods) == {"router", "colocated", "redis"}
    colocated = pods["colocated"]
    assert allows(policies, pods["router"], colocated, WORKER_HTTP)
    assert not allows(policies, None, colocated, WORKER_HTTP)
    assert not allows(policies, pods["redis"], colocated, WORKER_HTTP)
    assert not allows(policies, other_release_pod("router"), colocated, WORKER_HTTP)
    # A colocated worker has no KV listener, and nothing may reach it on the KV or UCX ports.
    assert "kv" not in colocated.ports
    for port in (KV, 20000):
        assert not allows(policies, pods["router"], colocated, port)
        assert not allows(policies, colocated, colocated, port)


def test_redis_accepts_colocated_workers(colocated_cluster):
    policies, pods = colocated_cluster
    assert allows(policies, pods["colocated"], pods["redis"], REDIS)
    assert not allows(policies, other_release_pod("colocated"), pods["redis"], REDIS)


def test_colocated_beside_the_pair_opens_no_kv_path_to_or_from_it(render):
    rendered = render({"colocated": {"replicas": 1}, "networkPolicy": {"metricsFrom": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]}})
    policies, pods = rendered.all("NetworkPolicy"), pods_of(rendered)
    prometheus = Pod(name="prometheus", labels={"app": "prometheus"}, namespace="monitoring")
    assert allows(policies, pods["router"], pods["colocated"], WORKER_HTTP)
    assert allows(policies, prometheus, pods["colocated"], WORKER_HTTP)
    for role in ("prefill", "decode"):
        assert not allows(policies, pods["colocated"], pods[role], KV)
        assert not allows(policies, pods[role], pods["colocated"], KV)
    assert allows(policies, pods["decode"], pods["prefill"], KV)
