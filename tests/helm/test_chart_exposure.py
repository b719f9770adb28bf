"""How the endpoint is reached and watched: Ingress with SSE-friendly settings, the Gateway API
HTTPRoute, the ServiceMonitor and the Grafana dashboard.

HTTPRoute and ServiceMonitor come from CRDs that kubernetes-validate has no schema for, so their
structure is asserted here field by field against what the router and worker Services expose."""

from __future__ import annotations

import json
import re

from fake_cni import selects

ROUTER_METRICS = {
    "pdserve:time_to_first_token_seconds",
    "pdserve:inter_token_latency_seconds",
    "pdserve:time_per_output_token_seconds",
    "pdserve:e2e_request_latency_seconds",
    "pdserve:requests_total",
}
WORKER_METRICS = {
    "pdserve:num_requests_running",
    "pdserve:num_requests_waiting",
    "pdserve:kv_cache_usage_perc",
    "pdserve:kv_transfer_bytes_total",
    "pdserve:kv_transfer_seconds_total",
    "pdserve:kv_transfer_failures_total",
}


def test_ingress_keeps_server_sent_events_unbuffered_and_long_lived(render):
    rendered = render({"router": {"ingress": {"enabled": True, "className": "nginx",
                                              "host": "llm.example.com"}}})
    ingress = rendered.one("Ingress", "pdserve-router")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    assert ingress["spec"]["ingressClassName"] == "nginx"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "llm.example.com"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    service = rendered.one("Service", backend["name"])
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    assert service["metadata"]["labels"]["app.kubernetes.io/component"] == "router"


def test_user_annotations_add_to_and_override_the_sse_ones(render):
    rendered = render({"router": {"ingress": {"enabled": True, "annotations": {
        "nginx.ingress.kubernetes.io/proxy-read-timeout": "7200",
        "cert-manager.io/cluster-issuer": "letsencrypt"}}}})
    annotations = rendered.one("Ingress", "pdserve-router")["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "7200"
    assert annotations["cert-manager.io/cluster-issuer"] == "letsencrypt"
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"


def test_ingress_and_route_are_off_by_default(render):
    rendered = render()
    assert rendered.all("Ingress") == [] and rendered.all("HTTPRoute") == []


def test_httproute_sends_traffic_to_the_router_service(render):
    rendered = render({"router": {"httpRoute": {
        "enabled": True, "parentRefs": [{"name": "public", "namespace": "gateways"}],
        "hostnames": ["llm.example.com"], "timeouts": {"request": "0s"}}}})
    route = rendered.one("HTTPRoute", "pdserve-router")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    spec = route["spec"]
    assert spec["parentRefs"] == [{"name": "public", "namespace": "gateways"}]
    assert spec["hostnames"] == ["llm.example.com"]
    (rule,) = spec["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert rule["timeouts"] == {"request": "0s"}
    (backend,) = rule["backendRefs"]
    service = rendered.one("Service", backend["name"])
    assert backend["port"] in {p["port"] for p in service["spec"]["ports"]}
    assert service["metadata"]["labels"]["app.kubernetes.io/component"] == "router"
    assert set(route) == {"apiVersion", "kind", "metadata", "spec"}


def test_service_monitor_scrapes_router_and_every_worker_pool(render):
    rendered = render({"metrics": {"serviceMonitor": {"enabled": True, "interval": "30s",
                                                      "labels": {"release": "prom"}}}})
    monitor = rendered.one("ServiceMonitor", "pdserve")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"matchNames": ["llm"]}
    scraped = [s for s in rendered.all("Service") if selects(spec["selector"],
                                                             s["metadata"]["labels"])]
    assert sorted(s["metadata"]["name"] for s in scraped) == [
        "pdserve-decode", "pdserve-prefill", "pdserve-router"]
    (endpoint,) = spec["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["interval"] == "30s"
    for service in scraped:
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    relabel = endpoint["relabelings"][0]
    assert relabel["targetLabel"] == "component"
    assert relabel["sourceLabels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_component"]


def test_grafana_dashboard_charts_every_pdserve_metric_and_nothing_else(render):
    rendered = render({"metrics": {"grafanaDashboard": {"enabled": True}}})
    config_map = rendered.one("ConfigMap", "pdserve-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["pdserve.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = set()
    for expr in exprs:
        for name in re.findall(r"pdserve:[a-z0-9_]+", expr):
            used.add(re.sub(r"_(bucket|sum|count)$", "", name))
    assert used == ROUTER_METRICS | WORKER_METRICS
    histograms = [e for e in exprs if "histogram_quantile" in e]
    assert histograms and all("_bucket" in e and "by (le)" in e for e in histograms)
    assert any(v["name"] == "datasource" for v in dashboard["templating"]["list"])


def test_service_monitor_scrapes_only_the_pools_that_run(render, colocated_plan_values):
    rendered = render({**colocated_plan_values, "metrics": {"serviceMonitor": {"enabled": True}}})
    spec = rendered.one("ServiceMonitor", "pdserve")["spec"]
    scraped = [s for s in rendered.all("Service") if selects(spec["selector"],
                                                             s["metadata"]["labels"])]
    assert sorted(s["metadata"]["name"] for s in scraped) == ["pdserve-colocated",
                                                              "pdserve-router"]
    (expression,) = spec["selector"]["matchExpressions"]
    assert expression["values"] == ["router", "colocated"]
    (endpoint,) = spec["endpoints"]
    for service in scraped:
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
