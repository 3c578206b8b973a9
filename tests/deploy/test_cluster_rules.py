"""What a real cluster would enforce, checked on every rendered configuration: the defaults,
each ci/*-values.yaml and each skaffold profile (conftest.CASES), with the pinned stack
values of deploy/stack beside them.

No cluster runs here, so each rule a cluster (or the stack running in it) applies is written
down as a generic check over the rendered objects instead of one assert per file: Services
select pods, ports and probe paths exist, ServiceMonitors find their Services, the
NetworkPolicies allow exactly the flows the system needs, every referenced object exists,
budgets allow drains, autoscalers use metrics the cluster serves, every address names a
Service that exists, every alert reaches a receiver that exists, the dashboards' recorded
series are recorded, and the Collector's durations are durations.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from fastapi import FastAPI
from fastapi.routing import APIRoute

from servescope.cli import kube_stack as stack_cli
from servescope.runtime.health import Health, add_health_routes
from servescope.telemetry.metrics import ServiceMetrics, add_metrics_route

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "servescope"
STACK_DIR = ROOT / "deploy" / "stack"
STACK = yaml.safe_load((STACK_DIR / "stack.yaml").read_text())
STACK_NS = STACK["namespace"]
CHART_README = (CHART / "README.md").read_text()
GO_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")


def _workloads(rendered) -> list[dict[str, Any]]:
    return [o for o in rendered.objects if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]


def _pod(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def _labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against labels."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _container_port(workload: dict[str, Any], port: int | str) -> int | None:
    """The container port a Service targetPort or probe port names, or None."""
    for container in _pod(workload)["containers"]:
        for p in container.get("ports", []):
            if port in (p.get("name"), p["containerPort"]):
                return int(p["containerPort"])
    return None


def _backing(rendered, service: dict[str, Any]) -> list[dict[str, Any]]:
    selector = {"matchLabels": service["spec"].get("selector", {})}
    return [w for w in _workloads(rendered) if _selects(selector, _labels(w))]


def _stack_ports() -> dict[str, set[int]]:
    """Service name -> ports, for the stack's Services (deploy/stack/stack.yaml `services`)."""
    ports: dict[str, set[int]] = {}
    for release in STACK["releases"]:
        for service in release.get("services", {}).values():
            ports.setdefault(service["name"], set()).update(
                {int(service["port"]), *map(int, service.get("ports", []))}
            )
    return ports


def _stack_pod_labels(key: str) -> dict[str, str]:
    for release in STACK["releases"]:
        if key in release.get("podLabels", {}):
            return dict(release["podLabels"][key])
    raise KeyError(key)


# -- Services, ports, probes --------------------------------------------------------------


def test_service_selectors_equal_pod_labels(case):
    name, rendered = case
    for service in rendered.of_kind("Service"):
        selector = service["spec"]["selector"]
        backing = _backing(rendered, service)
        assert len(backing) == 1, (
            f"{name}: Service {service['metadata']['name']} selects {len(backing)} workloads"
        )
        (workload,) = backing
        assert workload["spec"]["selector"]["matchLabels"] == selector, name
        assert workload["metadata"]["name"] == service["metadata"]["name"], name


def test_target_ports_and_probe_ports_exist(case):
    name, rendered = case
    for service in rendered.of_kind("Service"):
        (workload,) = _backing(rendered, service)
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert _container_port(workload, target) is not None, (
                f"{name}: Service {service['metadata']['name']} targets port {target!r}, "
                "which no container declares"
            )
    for workload in _workloads(rendered):
        for container in _pod(workload)["containers"]:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                handler = container.get(probe, {}).get("httpGet")
                if handler:
                    assert _container_port(workload, handler["port"]) is not None, (
                        f"{name}: {container['name']} {probe} port {handler['port']!r}"
                    )


@functools.cache
def _runtime_routes() -> frozenset[str]:
    """The GET routes every service gets from servescope.runtime's instrument_app."""
    app = FastAPI()
    add_health_routes(app, Health("any", "test"))
    add_metrics_route(app, ServiceMetrics("classifier"))
    return frozenset(r.path for r in app.routes if isinstance(r, APIRoute) and "GET" in r.methods)


def _service_source(image: str) -> Path:
    """services/<name>/ of an image `servescope-<name>[:tag|@digest]`."""
    repo = image.split("@")[0].rsplit(":", 1)[0].rsplit("/", 1)[-1]
    folder = ROOT / "services" / repo.removeprefix("servescope-")
    assert folder.is_dir(), f"image {image} is built from no folder under services/"
    return folder


def test_probe_and_scrape_paths_are_routes_the_service_serves(case):
    name, rendered = case
    served = _runtime_routes()
    for workload in _workloads(rendered):
        for container in _pod(workload)["containers"]:
            source = _service_source(container["image"])
            apps = list(source.glob("src/servescope/*/app.py"))
            assert apps and "instrument_app(" in apps[0].read_text(), (
                f"{source} does not start from the runtime's instrument_app"
            )
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                path = container[probe]["httpGet"]["path"]
                assert path in served, f"{name}: {container['name']} {probe} {path}"
    for monitor in rendered.of_kind("ServiceMonitor"):
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint.get("path", "/metrics") in served, name


def test_every_service_monitor_selects_a_service_and_port(case, helm):
    name, rendered = case
    for monitor in rendered.of_kind("ServiceMonitor"):
        spec = monitor["spec"]
        namespaces = spec.get("namespaceSelector", {}).get(
            "matchNames", [monitor["metadata"]["namespace"]]
        )
        selected = [
            s for s in rendered.of_kind("Service")
            if s["metadata"]["namespace"] in namespaces and _selects(spec["selector"], s["metadata"]["labels"])
        ]  # fmt: skip
        assert selected, f"{name}: ServiceMonitor {monitor['metadata']['name']} selects no Service"
        for service in selected:
            names = {p.get("name") for p in service["spec"]["ports"]}
            for endpoint in spec["endpoints"]:
                assert endpoint["port"] in names, (name, service["metadata"]["name"])
            if "jobLabel" in spec:
                assert spec["jobLabel"] in service["metadata"]["labels"], name


# -- Prometheus Operator objects need their CRDs ------------------------------------------


def test_operator_objects_only_when_the_cluster_serves_their_api(case, helm):
    """Before `servescope stack install` the cluster has no monitoring.coreos.com/v1: a release
    that applied a ServiceMonitor would fail ("no matches for kind ServiceMonitor"). The chart
    leaves them out and NOTES says what is missing and what to run."""
    name, _ = case
    bare = helm.render(helm.CASES[name], crds=False)
    assert not {o["kind"] for o in bare.objects} & helm.PROMETHEUS_OPERATOR_KINDS, name
    values = helm.load_values(helm.CASES[name])
    monitoring = values.get("monitoring", {})
    wanted = [
        kind
        for kind, key in (
            ("ServiceMonitor", "serviceMonitor"),
            ("PrometheusRule", "prometheusRule"),
        )
        if monitoring.get(key, {}).get("enabled")
    ]
    if wanted:
        assert "MISSING" in bare.notes and "servescope stack install" in bare.notes, name
        for kind in wanted:
            assert kind in bare.notes, name
        with_stack = helm.render(helm.CASES[name])
        assert set(wanted) <= {o["kind"] for o in with_stack.objects}, name
        assert "MISSING" not in with_stack.notes, name
    else:
        assert "MISSING" not in bare.notes, name


# -- network policies ----------------------------------------------------------------------

# A pod: (namespace labels, pod labels, {(port, protocol)} it listens on).
Pod = tuple[dict[str, str], dict[str, str], frozenset[tuple[int, str]]]


def _ns(name: str) -> dict[str, str]:
    return {"kubernetes.io/metadata.name": name}


def _peer_matches(
    peer: dict[str, Any], ns_labels: dict[str, str], labels: dict[str, str], own_ns: str
) -> bool:
    if "ipBlock" in peer:
        return True
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], ns_labels):
            return False
    elif ns_labels != _ns(own_ns):
        return False
    return _selects(peer.get("podSelector", {}), labels)


def _port_matches(
    rule_ports: list[dict[str, Any]] | None, port: int, protocol: str, named: dict[str, int]
) -> bool:
    if not rule_ports:
        return True
    for p in rule_ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        value = p.get("port")
        if value is None or value == port or named.get(str(value)) == port:
            return True
    return False


def _rules_allow(rules, peer_ns, peer_labels, port, protocol, own_ns, named, key) -> bool:
    for rule in rules or []:
        peers = rule.get(key)
        matches = peers is None or any(
            _peer_matches(p, peer_ns, peer_labels, own_ns) for p in peers
        )
        if matches and _port_matches(rule.get("ports"), port, protocol, named):
            return True
    return False


def _universe(rendered, helm) -> dict[str, Pod]:
    pods: dict[str, Pod] = {}
    for w in _workloads(rendered):
        ports = frozenset(
            (int(p["containerPort"]), p.get("protocol", "TCP"))
            for c in _pod(w)["containers"] for p in c.get("ports", [])
        )  # fmt: skip
        pods[helm.component_of(w)] = (_ns(helm.NAMESPACE), _labels(w), ports)
    stack_ports = _stack_ports()
    pods["prometheus"] = (
        _ns(STACK_NS),
        _stack_pod_labels("prometheus"),
        frozenset({(9090, "TCP")}),
    )
    pods["alertmanager"] = (
        _ns(STACK_NS),
        _stack_pod_labels("alertmanager"),
        frozenset({(9093, "TCP")}),
    )
    pods["collector"] = (
        _ns(STACK_NS), _stack_pod_labels("collector"),
        frozenset((p, "TCP") for p in stack_ports["otel-collector"]),
    )  # fmt: skip
    pods["dns"] = (
        _ns("kube-system"),
        {"k8s-app": "kube-dns"},
        frozenset({(53, "UDP"), (53, "TCP")}),
    )
    pods["outsider"] = (_ns("default"), {"app": "someone-else"}, frozenset({(8080, "TCP")}))
    return pods


def _needed_flows(rendered, helm, pods: dict[str, Pod]) -> set[tuple[str, str, int, str]]:
    """(source, destination, port, protocol) the system needs, from what is rendered: the
    callers' URLs, the scrapes, OTLP, DNS, the responder's Prometheus and Alertmanager's
    webhooks."""
    needed: set[tuple[str, str, int, str]] = set()
    services = {s["metadata"]["name"]: s for s in rendered.of_kind("Service")}
    for w in _workloads(rendered):
        me = helm.component_of(w)
        needed |= {(me, "dns", 53, "UDP"), (me, "dns", 53, "TCP")}
        env = helm.env_of(helm.containers(w)[0])
        for key, value in env.items():
            if not value.startswith("http"):
                continue
            url = urlsplit(value)
            host = (url.hostname or "").split(".")[0]
            if host in services:
                (target,) = _backing(rendered, services[host])
                needed.add((me, helm.component_of(target), _container_port(target, "http"), "TCP"))
            elif key == "OTEL_EXPORTER_OTLP_ENDPOINT":
                needed.add((me, "collector", url.port, "TCP"))
            elif key == "SERVESCOPE_RESPONDER_PROMETHEUS_URL":
                needed.add((me, "prometheus", url.port, "TCP"))
        if me == "responder":
            needed.add(("alertmanager", me, _container_port(w, "http"), "TCP"))
        # Prometheus scrapes every component (ServiceMonitor or not: the policy is ready).
        needed.add(("prometheus", me, _container_port(w, "http"), "TCP"))
    return needed


def _allowed_flows(rendered, helm, pods: dict[str, Pod]) -> set[tuple[str, str, int, str]]:
    policies = rendered.of_kind("NetworkPolicy")
    allowed = set()
    for src, (src_ns, src_labels, _) in pods.items():
        for dst, (dst_ns, dst_labels, dst_ports) in pods.items():
            if src == dst:
                continue
            for port, protocol in dst_ports:
                ok = True
                for policy in policies:
                    spec = policy["spec"]
                    own = policy["metadata"]["namespace"]
                    # Ingress: policies in the destination's namespace that select it.
                    if (
                        _ns(own) == dst_ns
                        and _selects(spec["podSelector"], dst_labels)
                        and "Ingress" in spec["policyTypes"]
                    ):
                        named = {"http": port} if (port, protocol) in dst_ports else {}
                        ok &= _rules_allow(
                            spec.get("ingress"),
                            src_ns,
                            src_labels,
                            port,
                            protocol,
                            own,
                            named,
                            "from",
                        )
                    # Egress: policies in the source's namespace that select it.
                    if (
                        _ns(own) == src_ns
                        and _selects(spec["podSelector"], src_labels)
                        and "Egress" in spec["policyTypes"]
                    ):
                        named = {"http": port}
                        ok &= _rules_allow(
                            spec.get("egress"), dst_ns, dst_labels, port, protocol, own, named, "to"
                        )
                if ok:
                    allowed.add((src, dst, port, protocol))
    return allowed


def test_network_policies_allow_each_needed_flow_and_nothing_else(case, helm):
    name, rendered = case
    pods = _universe(rendered, helm)
    needed = _needed_flows(rendered, helm, pods)
    if not rendered.of_kind("NetworkPolicy"):
        # Policies off (ci/minimal-values.yaml): nothing to evaluate, and nothing may have
        # rendered half of them; the values must say so explicitly.
        values = helm.load_values(helm.CASES[name])
        assert values.get("networkPolicy", {}).get("enabled") is False, name
        return
    allowed = _allowed_flows(rendered, helm, pods)
    missing = needed - allowed
    assert not missing, f"{name}: blocked but needed: {sorted(missing)}"
    app = {helm.component_of(w) for w in _workloads(rendered)}
    public = {
        helm.component_of(w) for w in _workloads(rendered)
        if ("outsider", helm.component_of(w), _container_port(w, "http"), "TCP") in allowed
    }  # fmt: skip
    values = helm.load_values(helm.CASES[name])
    declared_public = {
        c for c, v in helm.merge_values(yaml.safe_load((CHART / "values.yaml").read_text())["components"], values.get("components", {})).items()
        if v.get("enabled") and v.get("public")
    }  # fmt: skip
    assert public == declared_public, f"{name}: reachable from anywhere: {sorted(public)}"
    extra = {
        f for f in allowed - needed
        # The public edge takes its port from anyone outside the app; the app's own pods
        # still reach it only where needed.
        if (f[0] in app or f[1] in app) and not (f[1] in public and f[0] not in app)
    }  # fmt: skip
    assert not extra, f"{name}: allowed but not needed: {sorted(extra)}"


# -- references ----------------------------------------------------------------------------

BUILT_IN = {
    ("PriorityClass", "system-cluster-critical"),
    ("PriorityClass", "system-node-critical"),
    ("ServiceAccount", "default"),
}


def _prerequisites() -> str:
    """The chart README's "Prerequisites" section: objects a user creates before installing."""
    match = re.search(r"^## Prerequisites\n(.*?)(?=^## |\Z)", CHART_README, re.S | re.M)
    assert match, "deploy/helm/servescope/README.md has no '## Prerequisites' section"
    return match.group(1)


def _references(pod: dict[str, Any]) -> Iterator[tuple[str, str]]:
    if pod.get("priorityClassName"):
        yield "PriorityClass", pod["priorityClassName"]
    yield "ServiceAccount", pod.get("serviceAccountName", "default")
    for secret in pod.get("imagePullSecrets", []):
        yield "Secret", secret["name"]
    for volume in pod.get("volumes", []):
        if "configMap" in volume:
            yield "ConfigMap", volume["configMap"]["name"]
        if "secret" in volume:
            yield "Secret", volume["secret"]["secretName"]
        if "persistentVolumeClaim" in volume:
            yield "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]
        for source in volume.get("projected", {}).get("sources", []):
            for kind in ("configMap", "secret"):
                if kind in source:
                    yield kind[0].upper() + kind[1:], source[kind]["name"]
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        for env in container.get("env", []):
            ref = env.get("valueFrom", {})
            if "configMapKeyRef" in ref and not ref["configMapKeyRef"].get("optional"):
                yield "ConfigMap", ref["configMapKeyRef"]["name"]
            if "secretKeyRef" in ref and not ref["secretKeyRef"].get("optional"):
                yield "Secret", ref["secretKeyRef"]["name"]
        for source in container.get("envFrom", []):
            for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if key in source and not source[key].get("optional"):
                    yield kind, source[key]["name"]


def test_every_referenced_object_is_created_or_a_documented_prerequisite(case):
    name, rendered = case
    created = {(o["kind"], o["metadata"]["name"]) for o in rendered.objects}
    documented = _prerequisites()
    for workload in _workloads(rendered):
        for ref in _references(_pod(workload)):
            if ref in created or ref in BUILT_IN:
                continue
            kind, ref_name = ref
            assert re.search(rf"\b{kind}\b.*`{re.escape(ref_name)}`", documented), (
                f"{name}: {workload['metadata']['name']} needs {kind} {ref_name}, which the "
                "chart does not create and the chart README's Prerequisites does not list"
            )


# -- disruption budgets and autoscalers ---------------------------------------------------


def _min_replicas(rendered, deployment: dict[str, Any]) -> int:
    for hpa in rendered.of_kind("HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]:
            return int(hpa["spec"].get("minReplicas", 1))
    return int(deployment["spec"].get("replicas", 1))


def _disruptions(max_unavailable: int | str, replicas: int) -> int:
    if isinstance(max_unavailable, str) and max_unavailable.endswith("%"):
        # Kubernetes rounds a percentage of maxUnavailable up.
        return -(-replicas * int(max_unavailable[:-1]) // 100)
    return int(max_unavailable)


def test_budgets_allow_a_disruption_and_protect_something(case):
    name, rendered = case
    for pdb in rendered.of_kind("PodDisruptionBudget"):
        spec = pdb["spec"]
        targets = [
            d for d in rendered.of_kind("Deployment")
            if _selects(spec["selector"], _labels(d))
        ]  # fmt: skip
        assert len(targets) == 1, name
        replicas = _min_replicas(rendered, targets[0])
        if "maxUnavailable" in spec:
            allowed = _disruptions(spec["maxUnavailable"], replicas)
        else:
            allowed = replicas - int(spec["minAvailable"])
        assert allowed >= 1, (
            f"{name}: PDB {pdb['metadata']['name']} allows no disruption at {replicas} "
            "replicas: node drains and autoscaler scale-down would hang"
        )
        assert allowed < replicas, (
            f"{name}: PDB {pdb['metadata']['name']} lets all {replicas} replicas go at once: "
            "it protects nothing"
        )


def _custom_metrics_api() -> bool:
    """Whether the stack installs a custom/external metrics API (prometheus-adapter, KEDA)."""
    return any(
        r["chart"].split("/")[-1] in ("prometheus-adapter", "keda") for r in STACK["releases"]
    )


def test_autoscalers_use_only_metrics_the_cluster_serves(case):
    """metrics-server (`minikube start --addons metrics-server`) serves CPU and memory; Pods,
    Object and External metrics need an adapter the stack would have to install."""
    name, rendered = case
    served = {"Resource", "ContainerResource"}
    if _custom_metrics_api():
        served |= {"Pods", "Object", "External"}
    for hpa in rendered.of_kind("HorizontalPodAutoscaler"):
        for metric in hpa["spec"].get("metrics", []):
            assert metric["type"] in served, (
                f"{name}: HPA {hpa['metadata']['name']} scales on a {metric['type']} metric; "
                "no custom-metrics API is installed (its status would show <unknown>)"
            )


# -- addresses -----------------------------------------------------------------------------

_CLUSTER_URL = re.compile(
    r"(?:https?://)?([a-z0-9-]+)\.([a-z0-9-]+)\.svc(?:\.cluster\.local)?:(\d+)"
)


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def _stack_addresses() -> Iterator[tuple[str, str, str, int]]:
    """(file, service, namespace, port) of every in-cluster address in the stack's values,
    including Fluent Bit's `Host`/`Port` pairs."""
    for path in sorted(STACK_DIR.glob("*.yaml")):
        # The remote-write values address a store installed apart from the stack (Mimir in
        # its own namespace), off until a user adds them.
        if path.name in ("stack.yaml", "kube-prometheus-stack-remote-write.yaml"):
            continue
        for text in _strings(yaml.safe_load(path.read_text())):
            for m in _CLUSTER_URL.finditer(text):
                yield path.name, m.group(1), m.group(2), int(m.group(3))
            for m in re.finditer(r"Host\s+([a-z0-9-]+)\.([a-z0-9-]+)\.svc\S*\s+Port\s+(\d+)", text):
                yield path.name, m.group(1), m.group(2), int(m.group(3))


def test_every_stack_address_names_a_service_and_port_of_the_stack():
    ports = _stack_ports()
    found = list(_stack_addresses())
    assert {f for f, *_ in found} >= {
        "opentelemetry-collector.yaml", "kube-prometheus-stack.yaml", "fluent-bit.yaml"
    }  # fmt: skip
    for file, service, namespace, port in found:
        assert namespace == STACK_NS, (file, service)
        assert service in ports and port in ports[service], (
            f"{file}: {service}.{namespace}:{port} is no Service port of deploy/stack/stack.yaml"
        )


def _app_addresses(rendered, helm) -> Iterator[tuple[str, str, str, str, int]]:
    for w in _workloads(rendered):
        for key, value in helm.env_of(helm.containers(w)[0]).items():
            if not re.match(r"https?://", value):
                continue
            url = urlsplit(value)
            host = url.hostname or ""
            if host in ("127.0.0.1", "localhost") or ("." in host and ".svc" not in host):
                continue  # links for a browser (port-forwards) or outside the cluster
            parts = host.split(".")
            namespace = parts[1] if len(parts) > 1 else helm.NAMESPACE
            port = url.port or (443 if url.scheme == "https" else 80)
            yield helm.component_of(w), key, parts[0], namespace, port


def test_every_app_address_names_a_service_and_port_that_exists(case, helm):
    name, rendered = case
    stack = _stack_ports()
    own = {
        s["metadata"]["name"]: {p["port"] for p in s["spec"]["ports"]}
        for s in rendered.of_kind("Service")
    }
    for component, key, service, namespace, port in _app_addresses(rendered, helm):
        if namespace == helm.NAMESPACE:
            assert port in own.get(service, set()), f"{name}: {component} {key}"
        else:
            assert namespace == STACK_NS, f"{name}: {component} {key}"
            assert port in stack.get(service, set()), (
                f"{name}: {component} {key} -> {service}:{port}"
            )


# -- alerts and their receivers -----------------------------------------------------------


@functools.cache
def _cluster_alertmanager_config() -> dict[str, Any]:
    """The alertmanager.config `servescope stack install` gives kube-prometheus-stack."""
    kps = next(r for r in stack_cli.load_stack(ROOT).releases if r.name == "kube-prometheus-stack")
    generated = stack_cli.generated_values(ROOT, kps)
    assert generated is not None
    return generated[1]["alertmanager"]["config"]


def _matcher(text: str) -> tuple[str, str, str]:
    m = re.match(r'^\s*(\w+)\s*(=~|!~|!=|=)\s*"?(.*?)"?\s*$', text)
    assert m, text
    return m.group(1), m.group(2), m.group(3)


def _matches(route: dict[str, Any], labels: dict[str, str]) -> bool:
    for text in route.get("matchers", []):
        key, op, value = _matcher(text)
        actual = labels.get(key, "")
        ok = {
            "=": actual == value,
            "!=": actual != value,
            "=~": re.fullmatch(value, actual) is not None,
            "!~": re.fullmatch(value, actual) is None,
        }[op]
        if not ok:
            return False
    return True


def route_alert(config: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """The receivers an alert with `labels` reaches (Alertmanager's routing tree)."""

    def walk(route: dict[str, Any], inherited: str) -> list[str]:
        receiver = route.get("receiver", inherited)
        found: list[str] = []
        for child in route.get("routes", []):
            if _matches(child, labels):
                found += walk(child, receiver)
                if not child.get("continue"):
                    break
        return found or [receiver]

    return walk(config["route"], config["route"]["receiver"])


# Alerts kube-prometheus-stack's own rules raise on every cluster (its default rules).
STACK_ALERTS = [
    {"alertname": "Watchdog", "severity": "none"},
    {"alertname": "InfoInhibitor", "severity": "none"},
    {"alertname": "KubePodCrashLooping", "severity": "warning", "namespace": "servescope"},
    {"alertname": "TargetDown", "severity": "warning", "namespace": "monitoring"},
    {"alertname": "KubeCPUOvercommit", "severity": "warning"},
    {"alertname": "CPUThrottlingHigh", "severity": "info", "namespace": "servescope"},
]


def _rendered_alerts(rendered) -> list[dict[str, str]]:
    alerts = []
    for rule in rendered.of_kind("PrometheusRule"):
        for group in rule["spec"]["groups"]:
            for r in group["rules"]:
                if "alert" in r:
                    alerts.append(
                        {"alertname": r["alert"], "namespace": "servescope", **r.get("labels", {})}
                    )
    return alerts


def test_each_configurations_alerts_reach_a_receiver_that_exists(case, helm):
    """Every alert the cluster raises (the app's rules when this configuration loads them, and
    the stack's own) routes to receivers whose webhooks name a Service that exists: Watchdog
    and friends to the stack's "null" receiver, Servescope's alerts to the responder."""
    name, rendered = case
    config = _cluster_alertmanager_config()
    receivers = {r["name"]: r for r in config["receivers"]}
    own = {
        s["metadata"]["name"]: {p["port"] for p in s["spec"]["ports"]}
        for s in rendered.of_kind("Service")
    }
    stack = _stack_ports()
    alerts = [*STACK_ALERTS, *_rendered_alerts(rendered)]
    for labels in alerts:
        for receiver in route_alert(config, labels):
            assert receiver in receivers, (name, labels["alertname"], receiver)
            for hook in receivers[receiver].get("webhook_configs", []):
                m = _CLUSTER_URL.match(hook["url"])
                assert m, f"{name}: {labels['alertname']} -> {hook['url']} is no in-cluster address"
                service, namespace, port = m.group(1), m.group(2), int(m.group(3))
                exists = (
                    port in own.get(service, set()) if namespace == helm.NAMESPACE
                    else port in stack.get(service, set())
                )  # fmt: skip
                assert exists, (
                    f"{name}: {labels['alertname']} goes to {hook['url']}, but this configuration "
                    f"renders no Service {service} with port {port}"
                )
    # The stack's own routing is kept: Watchdog proves the pipeline without becoming a note.
    assert route_alert(config, STACK_ALERTS[0]) == ["null"]
    assert route_alert(config, STACK_ALERTS[1]) == ["null"]
    assert {"target_matchers": ['alertname="InfoInhibitor"']} in config["inhibit_rules"]
    assert config["templates"] == ["/etc/alertmanager/config/*.tmpl"]


def test_profiles_with_alert_rules_deliver_them_to_the_responder(helm):
    """The alert labs (p95 latency from the intermediate stage on) read what Alertmanager
    delivered in the responder's incident notes."""
    config = _cluster_alertmanager_config()
    for name in [n for n in helm.CASES if n.startswith("profile/")]:
        rendered = helm.render(helm.CASES[name])
        alerts = _rendered_alerts(rendered)
        if not alerts:
            continue
        latency = [a for a in alerts if a.get("category") == "latency"]
        assert latency, name
        for labels in latency:
            (receiver,) = route_alert(config, labels)
            urls = [
                h["url"]
                for h in {r["name"]: r for r in config["receivers"]}[receiver]["webhook_configs"]
            ]
            assert any("servescope-responder." in u for u in urls), (name, labels["alertname"])
        assert rendered.named("Deployment", "servescope-responder"), name


def test_the_cluster_alertmanager_config_passes_amtool(tmp_path):
    import shutil
    import subprocess

    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("amtool is missing: apt-get install prometheus-alertmanager")
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(_cluster_alertmanager_config()))
    result = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# -- dashboards and the series they read --------------------------------------------------


def test_dashboards_find_every_recorded_series_they_read(case):
    """A dashboard that reads a recorded series (name with a colon) shows "No data" unless
    the same configuration loads the rule that records it."""
    name, rendered = case
    dashboards = [
        c for c in rendered.of_kind("ConfigMap") if "grafana_dashboard" in c["metadata"]["labels"]
    ]
    recorded = {
        r["record"]
        for rule in rendered.of_kind("PrometheusRule")
        for group in rule["spec"]["groups"]
        for r in group["rules"]
        if "record" in r
    }
    for configmap in dashboards:
        for text in configmap["data"].values():
            for expr in re.findall(r'"expr":\s*"((?:[^"\\]|\\.)*)"', text):
                for series in re.findall(r"\b([a-z_][a-z0-9_]*:[a-z0-9_:]+)", expr):
                    assert series in recorded, (
                        f"{name}: dashboard {configmap['metadata']['name']} reads {series}, "
                        "which no loaded rule records"
                    )


# -- the Collector's configuration ---------------------------------------------------------

DURATION_KEYS = re.compile(r"(timeout|interval|_delay|_duration|expiration|idle)$|^(buckets)$")
DEPRECATED_COMPONENTS = {"otlp": "otlp_grpc", "otlphttp": "otlp_http", "logging": "debug"}


def _collector_config() -> dict[str, Any]:
    return yaml.safe_load((STACK_DIR / "opentelemetry-collector.yaml").read_text())["config"]


def _walk(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, str(key)), value
            yield from _walk(value, (*path, str(key)))


def test_collector_durations_are_durations():
    """The Collector decodes time.Duration fields from strings with units; a bare number is
    nanoseconds (spanmetrics buckets of 0.1 would be 0.1 ns: every span in +Inf)."""
    checked = 0
    for path, value in _walk(_collector_config()):
        if not DURATION_KEYS.search(path[-1]) or value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            checked += 1
            assert isinstance(item, str) and GO_DURATION.match(item), (
                f"{'.'.join(path)}: {item!r} is not a duration with a unit (e.g. 100ms, 2s)"
            )
    assert checked >= 3


def test_collector_uses_no_deprecated_component_names():
    config = _collector_config()
    for section in ("receivers", "exporters"):
        for key in config.get(section) or {}:
            kind = key.split("/")[0]
            assert kind not in DEPRECATED_COMPONENTS, (
                f"{section}.{key}: `{kind}` is a deprecated alias; use "
                f"`{DEPRECATED_COMPONENTS[kind]}`"
            )
    for pipeline in config["service"]["pipelines"].values():
        for key in (pipeline or {}).get("exporters", []):
            assert key in config["exporters"] or key in config.get("connectors", {}), key


def test_spanmetrics_buckets_sit_on_the_latency_slo_thresholds():
    buckets = _collector_config()["connectors"]["spanmetrics"]["histogram"]["explicit"]["buckets"]
    seconds = []
    for b in buckets:
        m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)", b)
        assert m, b
        seconds.append(float(m.group(1)) / (1000 if m.group(2) == "ms" else 1))
    assert seconds == sorted(seconds)
    assert {0.1, 0.25} <= set(seconds)
