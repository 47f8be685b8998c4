"""Kubernetes NetworkPolicy (networking.k8s.io/v1) semantics, evaluated
against pods and addresses a test describes: "may this pod open TCP 53 to
that one?".

Why our own and not IBM's network-config-analyzer (np-guard, on PyPI): it
models everything needed here (ipBlock peers, named ports) and answers in
under a second, but version 2.1.0 pins its six dependencies exactly
(PyYAML==6.0.2, networkx, lxml, beautifulsoup4, ghapi, greenery: about 35 MB,
lxml compiled, ghapi a GitHub client). In the test extra those pins would
downgrade the PyYAML the rest of the suite uses and tie the project's test
environment to them, and its answers come only as CLI text to parse or
through internal classes. The rules below are the documented semantics in
about a hundred lines; every connection test_networkpolicy.py probed with
its first, fixed list of ports was cross-checked against the analyzer (2.1.0)
once, with no disagreement (later additions were not).

Semantics (https://kubernetes.io/docs/concepts/services-networking/network-policies/):
- A policy applies to the pods of its namespace its podSelector selects, in
  the directions of policyTypes (default: Ingress, plus Egress when its egress
  list is non-empty: `egress: []` alone isolates nothing outbound). A pod no
  policy selects for a direction is open in it; a selected pod gets only what
  some rule of those policies allows.
- A rule allows a connection when one of its peers matches (no peers: any)
  and one of its ports does (no ports: any). A connection needs the source's
  egress and the destination's ingress.
- namespaceSelector and podSelector in one peer must both match; a
  podSelector alone means the policy's own namespace.
- ipBlock matches by address, pods included: whether it matches pod IPs is up
  to the network plugin, and reading it broadly means a denial proven here
  holds on every plugin (no allowance here relies on an ipBlock matching a pod).
  A pod without an address (not yet scheduled) matches no ipBlock.
- A numeric port matches by number and the rule's protocol, whatever the
  destination declares; a named port matches the destination pod's container
  port of that name and protocol.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Labels = Mapping[str, str]
PROTOCOLS = ("TCP", "UDP", "SCTP")  # all NetworkPolicy knows


@dataclass(frozen=True)
class ContainerPort:
    port: int
    protocol: str = "TCP"
    name: str = ""


@dataclass(frozen=True, repr=False)  # short reprs: they show up in test failures
class Pod:
    name: str
    namespace: str
    labels: Labels = field(compare=False)  # a pod is its namespace and name
    ip: str = field(compare=False, default="")
    ports: tuple[ContainerPort, ...] = field(compare=False, default=())

    def __repr__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, repr=False)
class External:
    """An address outside the cluster (Graph, a managed Redis, the internet)."""

    name: str
    ip: str

    def __repr__(self) -> str:
        return f"{self.name} ({self.ip})"


Endpoint = Pod | External


def selects(selector: Mapping[str, Any], labels: Labels) -> bool:
    """A LabelSelector: matchLabels and matchExpressions all hold; {} selects all."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get(
            "values") or []
        present = key in labels
        holds = {"In": present and labels.get(key) in values,
                 "NotIn": not present or labels[key] not in values,
                 "Exists": present,
                 "DoesNotExist": not present}[operator]
        if not holds:
            return False
    return True


def in_block(ip: str, block: Mapping[str, Any]) -> bool:
    if not ip:
        return False  # a pod not given an address yet: no block holds it
    address = ipaddress.ip_address(ip)
    if address not in ipaddress.ip_network(block["cidr"]):
        return False
    return not any(address in ipaddress.ip_network(cidr) for cidr in block.get("except") or [])


def workload_pod(workload: Mapping[str, Any], ip: str) -> Pod:
    """The pod a rendered Deployment (or StatefulSet, DaemonSet) would start; its
    ports are those of its containers and of its sidecars (init containers that
    keep running), which serve as long as the pod does."""
    template = workload["spec"]["template"]
    sidecars = [c for c in template["spec"].get("initContainers") or []
                if c.get("restartPolicy") == "Always"]
    ports = tuple(ContainerPort(p["containerPort"], p.get("protocol", "TCP"), p.get("name", ""))
                  for c in [*sidecars, *template["spec"]["containers"]]
                  for p in c.get("ports") or [])
    return Pod(workload["metadata"]["name"], workload["metadata"].get("namespace", "default"),
               template["metadata"].get("labels") or {}, ip, ports)


@dataclass(repr=False)
class Network:
    """Pods in labelled namespaces under a set of NetworkPolicy objects."""

    namespaces: Mapping[str, Labels]
    policies: Sequence[Mapping[str, Any]]
    pods: list[Pod] = field(default_factory=list)

    def allows(self, src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP") -> bool:
        """May ``src`` open a connection to ``dst`` on ``port``/``protocol``?"""
        egress = not isinstance(src, Pod) or self._admits(src, "Egress", dst, dst, port, protocol)
        ingress = not isinstance(dst, Pod) or self._admits(dst, "Ingress", src, dst, port,
                                                             protocol)
        return egress and ingress

    def probe_ports(self) -> set[tuple[int, str]]:
        """Ports at which to ask ``allows`` to learn everything it allows.

        Each port entry of a rule opens one range (a port, port to endPort, a
        named port's number on the destination, or all ports from 1), so what
        the source's egress and the destination's ingress both open is a union
        of ranges, each starting at one of these: no port in between can be
        open while all of these are closed. Ends are added to show ranges.
        """
        protocols = set(PROTOCOLS)
        numbers = {1} | {c.port for pod in self.pods for c in pod.ports}
        for policy in self.policies:
            spec = policy["spec"]
            for rule in [*(spec.get("ingress") or []), *(spec.get("egress") or [])]:
                for entry in rule.get("ports") or []:
                    protocols.add(entry.get("protocol", "TCP"))
                    if isinstance(entry.get("port"), int):
                        numbers |= {entry["port"], entry.get("endPort", entry["port"])}
        return {(n, protocol) for n in numbers for protocol in protocols}

    def peer_selects(self, policy: Mapping[str, Any], peer: Mapping[str, Any]) -> list[Pod]:
        """The described pods one ``from``/``to`` peer of ``policy`` matches."""
        namespace = policy["metadata"]["namespace"]
        return [p for p in self.pods if self._peer_matches(peer, namespace, p)]

    def applies(self, policy: Mapping[str, Any], pod: Pod) -> bool:
        return (policy["metadata"]["namespace"] == pod.namespace
                and selects(policy["spec"]["podSelector"], pod.labels))

    def _admits(self, pod: Pod, direction: str, other: Endpoint, dst: Endpoint, port: int,
                protocol: str) -> bool:
        rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        policies = [p for p in self.policies
                    if self.applies(p, pod) and direction in policy_types(p)]
        if not policies:
            return True  # no policy isolates the pod in this direction
        return any(self._rule_matches(rule.get(peers_key), rule.get("ports"),
                                      p["metadata"]["namespace"], other, dst, port, protocol)
                   for p in policies for rule in p["spec"].get(rules_key) or [])

    def _rule_matches(self, peers: Iterable[Mapping[str, Any]] | None,
                      ports: Iterable[Mapping[str, Any]] | None, namespace: str,
                      other: Endpoint, dst: Endpoint, port: int, protocol: str) -> bool:
        peer_ok = not peers or any(self._peer_matches(p, namespace, other) for p in peers)
        return peer_ok and (not ports or any(port_matches(p, dst, port, protocol) for p in ports))

    def _peer_matches(self, peer: Mapping[str, Any], namespace: str, other: Endpoint) -> bool:
        if "ipBlock" in peer:
            return in_block(other.ip, peer["ipBlock"])
        if not isinstance(other, Pod):
            return False  # selectors select pods only
        if "namespaceSelector" in peer:
            if not selects(peer["namespaceSelector"], self.namespaces[other.namespace]):
                return False
        elif other.namespace != namespace:
            return False
        return selects(peer.get("podSelector") or {}, other.labels)


def policy_types(policy: Mapping[str, Any]) -> list[str]:
    spec = policy["spec"]
    # The API server's defaulting: Egress only for a non-empty egress list.
    return spec.get("policyTypes") or ["Ingress", *(["Egress"] if spec.get("egress") else [])]


def port_matches(rule: Mapping[str, Any], dst: Endpoint, port: int, protocol: str) -> bool:
    if rule.get("protocol", "TCP") != protocol:
        return False
    wanted = rule.get("port")
    if wanted is None:
        return True  # every port of the protocol
    if isinstance(wanted, str):  # a named port: the destination pod's
        return isinstance(dst, Pod) and any(
            c.name == wanted and c.protocol == protocol and c.port == port for c in dst.ports)
    return int(wanted) <= port <= int(rule.get("endPort", wanted))
