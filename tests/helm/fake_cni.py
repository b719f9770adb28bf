"""A fake of what a cluster's CNI does with NetworkPolicy ingress rules and label selectors.

No Kubernetes network runs here, so the chart's policies are checked by evaluating them with the
semantics the Kubernetes API documents: a pod selected by any ingress policy accepts only what
one of those policies' rules allows; a rule matches when a peer matches the source (or the rule
has no peers) and a port matches the destination port (or the rule has no ports)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Pod:
    """A pod as a NetworkPolicy sees it: labels, named container ports, its namespace."""

    name: str
    labels: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)
    namespace: str = "llm"

    @property
    def namespace_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label selector semantics: matchLabels plus In/NotIn/Exists/DoesNotExist."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def _peer_matches(peer: dict[str, Any], source: Pod | None, policy_namespace: str) -> bool:
    if source is None:  # traffic from outside the cluster matches only ipBlock peers
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], source.namespace_labels):
            return False
    elif source.namespace != policy_namespace:
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], source.labels)


def _port_matches(rule_port: dict[str, Any], destination: Pod, port: int) -> bool:
    if rule_port.get("protocol", "TCP") != "TCP":
        return False
    wanted = rule_port.get("port")
    if wanted is None:
        return True
    if isinstance(wanted, str):
        return destination.ports.get(wanted) == port
    return wanted <= port <= rule_port.get("endPort", wanted)


def allows(policies: list[dict[str, Any]], source: Pod | None, destination: Pod,
           port: int) -> bool:
    """Whether a TCP connection from `source` (None: outside the cluster) to `destination`
    on `port` gets through the ingress policies."""
    selecting = [
        p for p in policies
        if p["metadata"].get("namespace", destination.namespace) == destination.namespace
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and selects(p["spec"]["podSelector"], destination.labels)
    ]
    if not selecting:
        return True
    for policy in selecting:
        namespace = policy["metadata"].get("namespace", destination.namespace)
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from", [])
            ports = rule.get("ports", [])
            if peers and not any(_peer_matches(p, source, namespace) for p in peers):
                continue
            if ports and not any(_port_matches(p, destination, port) for p in ports):
                continue
            return True
    return False
