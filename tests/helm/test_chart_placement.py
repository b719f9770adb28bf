"""Placement from the plan: low node affinity puts every decode pod on a node with a prefill pod
(KV over NVLink); high node affinity only spreads each pool over nodes. A colocated pool moves
no KV and always just spreads."""

from __future__ import annotations

PREFILL = {
    "app.kubernetes.io/name": "pdserve",
    "app.kubernetes.io/instance": "pdserve",
    "app.kubernetes.io/component": "prefill",
}


def affinity(rendered, role: str) -> dict:
    return rendered.pod_spec(f"pdserve-{role}")["affinity"]


def spreads_own_pool(rendered, role: str) -> bool:
    pod_labels = rendered.one("Deployment", f"pdserve-{role}")["spec"]["template"]["metadata"]
    anti = affinity(rendered, role)["podAntiAffinity"]
    terms = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    return any(
        t["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= pod_labels["labels"].items()
        and t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
        for t in terms
    )


def test_low_affinity_plan_requires_decode_next_to_prefill(render, plan_values):
    assert plan_values["placement"]["affinity"] == "low"
    rendered = render(plan_values)
    (term,) = affinity(rendered, "decode")["podAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["labelSelector"]["matchLabels"] == PREFILL
    assert term["topologyKey"] == "kubernetes.io/hostname"
    # The selector really matches the prefill pods.
    prefill_labels = rendered.one("Deployment", "pdserve-prefill")["spec"]["template"]["metadata"]
    assert PREFILL.items() <= prefill_labels["labels"].items()
    assert "podAffinity" not in affinity(rendered, "prefill")
    assert spreads_own_pool(rendered, "prefill") and spreads_own_pool(rendered, "decode")


def test_low_affinity_can_be_a_preference(render):
    rendered = render({"placement": {"affinity": "low", "lowAffinityRule": "preferred"}})
    pod_affinity = affinity(rendered, "decode")["podAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in pod_affinity
    (term,) = pod_affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == PREFILL


def test_high_affinity_spreads_each_pool_without_pairing(render):
    rendered = render({"placement": {"affinity": "high"}})
    for role in ("prefill", "decode"):
        assert "podAffinity" not in affinity(rendered, role)
        assert spreads_own_pool(rendered, role)


def test_topology_key_is_configurable(render):
    rendered = render({"placement": {"affinity": "low", "topologyKey": "nvidia.com/gpu.clique"}})
    (term,) = affinity(rendered, "decode")["podAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "nvidia.com/gpu.clique"


def test_node_selector_and_tolerations_apply_to_workers_only(render):
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    rendered = render({"placement": {"nodeSelector": {"pool": "h100"},
                                     "tolerations": [toleration]}})
    for role in ("prefill", "decode"):
        spec = rendered.pod_spec(f"pdserve-{role}")
        assert spec["nodeSelector"] == {"pool": "h100"}
        assert spec["tolerations"] == [toleration]
    router = rendered.pod_spec("pdserve-router")
    assert "nodeSelector" not in router and "tolerations" not in router


def test_explicit_pool_affinity_replaces_the_computed_one(render):
    custom = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "zone", "operator": "In", "values": ["a"]}]}]}}}
    rendered = render({"placement": {"affinity": "low"}, "decode": {"affinity": custom}})
    assert affinity(rendered, "decode") == custom


def test_colocated_pool_spreads_over_nodes_whatever_the_placement(render):
    for placement in ("high", "low"):
        rendered = render({"colocated": {"replicas": 2}, "placement": {"affinity": placement}})
        colocated = affinity(rendered, "colocated")
        assert "podAffinity" not in colocated
        assert spreads_own_pool(rendered, "colocated")
        (term,) = colocated["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        assert term["weight"] == 100


def test_node_selector_and_tolerations_reach_the_colocated_pool(render, colocated_plan_values):
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    rendered = render({**colocated_plan_values, "placement": {"nodeSelector": {"pool": "a100"},
                                                              "tolerations": [toleration]}})
    spec = rendered.pod_spec("pdserve-colocated")
    assert spec["nodeSelector"] == {"pool": "a100"}
    assert spec["tolerations"] == [toleration]
