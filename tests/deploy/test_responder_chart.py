"""The alert responder on Kubernetes: its image (services/loadgen/Dockerfile), the chart's
optional `responder:` component, and kube-prometheus-stack's Alertmanager sending its webhooks
to the responder's Service. The generic checks (Kubernetes 1.32 strict validation, labels,
security posture, probes, resources, settings names) run over ci/responder-values.yaml and the
advanced profile in test_chart.py; these are the responder's own."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from servescope.cli import kube_stack as stack_cli
from servescope.responder.app import ResponderSettings, build_app

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "servescope"
RESPONDER_VALUES = CHART / "ci" / "responder-values.yaml"
ADVANCED = ROOT / "deploy" / "helm" / "profiles" / "advanced.yaml"
DOCKERFILE = ROOT / "services" / "loadgen" / "Dockerfile"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
STACK = yaml.safe_load((ROOT / "deploy" / "stack" / "stack.yaml").read_text())
SKAFFOLD = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
NAME = "servescope-responder"
ON = {"responder": {"enabled": True}}


def _routes(method: str) -> set[str]:
    app = build_app(ResponderSettings())
    return {
        route.resource.canonical
        for route in app.router.routes()
        if route.method == method and route.resource is not None
    }


def _responder_objects(rendered: Any) -> list[tuple[str, str]]:
    return sorted(
        (o["kind"], o["metadata"]["name"])
        for o in rendered.objects
        if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "responder"
        or o["metadata"]["name"] == NAME
    )


def _stack_service(key: str) -> dict[str, Any]:
    (kps,) = [r for r in STACK["releases"] if r["name"] == "kube-prometheus-stack"]
    return dict(kps["services"][key])


# -- only when enabled ----------------------------------------------------------------------


def test_off_by_default_and_on_only_where_switched_on(helm):
    assert VALUES["responder"]["enabled"] is False
    for name in helm.CASES:
        rendered = helm.render(helm.CASES[name])
        objects = _responder_objects(rendered)
        if name in ("ci/responder-values.yaml", "profile/advanced"):
            assert ("Deployment", NAME) in objects, name
        else:
            assert objects == [], f"{name} renders {objects}"
            assert "responder" not in rendered.notes, name


def test_enabled_renders_deployment_service_and_network_policy_only(helm):
    rendered = helm.render(values=ON)
    assert _responder_objects(rendered) == [
        ("Deployment", NAME),
        ("NetworkPolicy", NAME),
        ("Service", NAME),
    ]
    # One replica: the notes live in the pod, a second one would split them.
    assert rendered.named("Deployment", NAME)["spec"]["replicas"] == 1
    # Without network policies (ci/minimal-values.yaml), Deployment and Service only.
    minimal = helm.render([CHART / "ci" / "minimal-values.yaml"], ON)
    assert _responder_objects(minimal) == [("Deployment", NAME), ("Service", NAME)]
    # The services are unchanged by it.
    assert {o["metadata"]["name"] for o in helm.render().objects} == {
        o["metadata"]["name"] for o in rendered.objects
    } - {NAME}


def test_a_component_named_responder_and_the_responder_cannot_both_render(helm):
    component = dict(VALUES["components"]["postprocess"])
    with pytest.raises(helm.RenderError, match=r"components\.responder and responder\.enabled"):
        helm.render_values({**ON, "components": {"responder": component}})


# -- image, environment, volumes ------------------------------------------------------------


def _container(helm: Any, files: list[Path], values: dict[str, Any] | None = None) -> Any:
    rendered = helm.render(files, values)
    deployment = rendered.named("Deployment", NAME)
    (container,) = helm.containers(deployment)
    return rendered, deployment, container


def test_environment_is_what_the_responder_reads(helm, monkeypatch):
    _, deployment, container = _container(helm, [RESPONDER_VALUES])
    env = helm.env_of(container)
    overrides = yaml.safe_load(RESPONDER_VALUES.read_text())["responder"]
    # Only its own settings: no service variables and no tracing (it sends no traces).
    assert not [k for k in env if k.startswith("OTEL_")]
    assert [k for k in env if k.startswith("SERVESCOPE_")] == [
        k for k in env if k.startswith("SERVESCOPE_RESPONDER_")
    ]
    for key in [k for k in os.environ if k.startswith("SERVESCOPE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("SERVESCOPE_RESPONDER_"):
            monkeypatch.setenv(key, value)
    settings = ResponderSettings()  # what the process in the pod would read
    assert settings.host == "0.0.0.0"
    assert settings.port == container["ports"][0]["containerPort"] == VALUES["responder"]["port"]
    assert settings.prometheus_url == VALUES["responder"]["prometheusUrl"]
    assert settings.runbook_base_url == overrides["runbookBaseUrl"]
    assert settings.trace_url_template == overrides["traceUrlTemplate"]
    assert settings.window == overrides["window"] == "10m"
    assert settings.max_traces == 10
    # The notes go to an emptyDir, the only writable place besides /tmp.
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert str(settings.incident_dir) in mounts
    assert set(mounts) == {"/tmp", str(settings.incident_dir)}
    for name in mounts.values():
        assert "emptyDir" in volumes[name], name
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["image"] == f"servescope-loadgen:{rendered_app_version()}"


def rendered_app_version() -> str:
    return str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])


def test_unset_links_are_left_to_the_responder(helm):
    _, _, container = _container(helm, [], ON)
    env = helm.env_of(container)
    assert "SERVESCOPE_RESPONDER_RUNBOOK_BASE_URL" not in env
    assert "SERVESCOPE_RESPONDER_TRACE_URL_TEMPLATE" not in env
    assert env["SERVESCOPE_RESPONDER_WINDOW"] == "5m"


def test_default_prometheus_url_is_the_stacks_prometheus_service():
    prometheus = _stack_service("prometheus")
    assert VALUES["responder"]["prometheusUrl"] == (
        f"http://{prometheus['name']}.{STACK['namespace']}.svc.cluster.local:{prometheus['port']}"
    )


def test_probes_use_the_responders_own_health_route(helm):
    _, _, container = _container(helm, [ADVANCED])
    served = _routes("GET")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe
        assert container[probe]["httpGet"]["path"] in served


def test_memory_limit_leaves_headroom_over_the_measured_resident_set(helm):
    """Measured (values.yaml comment): 49 MiB resident after starting and writing a note."""
    _, _, container = _container(helm, [], ON)
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Mi") and int(limit[:-2]) >= 1.2 * 49


# -- network policy and scrapes -------------------------------------------------------------


def test_network_policy_admits_alertmanager_and_reaches_only_prometheus_and_dns(helm):
    rendered = helm.render([RESPONDER_VALUES])  # tracing and scrapes on for the services
    spec = rendered.named("NetworkPolicy", NAME)["spec"]
    assert (
        spec["podSelector"]["matchLabels"]
        == (rendered.named("Deployment", NAME)["spec"]["selector"]["matchLabels"])
    )
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = spec["ingress"]  # no scrapers: it serves no /metrics
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    (peer,) = ingress["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": STACK["namespace"]
    }
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "alertmanager"}
    dns, prometheus = spec["egress"]  # no collector, though tracing is on
    assert sorted(p["port"] for p in dns["ports"]) == [53, 53]
    assert prometheus["ports"] == [
        {"port": _stack_service("prometheus")["port"], "protocol": "TCP"}
    ]
    assert prometheus["to"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "prometheus"
    }


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("http://prometheus.observability.svc:9091", 9091),
        ("https://prometheus.example.com", 443),
        ("http://prometheus-operated.monitoring.svc/prometheus", 80),
    ],
)
def test_prometheus_egress_port_follows_the_url(helm, url, port):
    rendered = helm.render(values={"responder": {"enabled": True, "prometheusUrl": url}})
    egress = rendered.named("NetworkPolicy", NAME)["spec"]["egress"]
    assert egress[-1]["ports"] == [{"port": port, "protocol": "TCP"}]
    env = helm.env_of(helm.containers(rendered.named("Deployment", NAME))[0])
    assert env["SERVESCOPE_RESPONDER_PROMETHEUS_URL"] == url


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        value = labels.get(expression["key"])
        if expression["operator"] == "In" and value not in expression["values"]:
            return False
        if expression["operator"] == "NotIn" and value in expression["values"]:
            return False
    return True


def test_the_service_monitor_leaves_the_responder_out(helm):
    rendered = helm.render([ADVANCED])
    (monitor,) = rendered.of_kind("ServiceMonitor")
    selector = monitor["spec"]["selector"]
    selected = {
        s["metadata"]["name"]
        for s in rendered.of_kind("Service")
        if _selects(selector, s["metadata"]["labels"])
    }
    assert selected == {f"servescope-{s}" for s in ("preprocess", "classifier", "postprocess")}
    # The exclusion is what leaves it out: it carries the labels the rest of the selector uses.
    responder = rendered.named("Service", NAME)["metadata"]["labels"]
    assert _selects({"matchLabels": selector["matchLabels"]}, responder)
    assert "/metrics" not in _routes("GET")


# -- values schema ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"responder": {"enabled": "yes"}}, "want boolean"),
        ({"responder": {"enabled": True, "port": "9095"}}, "want integer"),
        ({"responder": {"enabled": True, "resources": {"limits": {"memory": True}}}}, "want"),
        ({"responder": {"enabled": True, "incidents": {"mountPath": 7}}}, "want string"),
        ({"responder": {"enabled": True, "prometheusUrl": "kube-prometheus:9090"}}, "pattern"),
        ({"responder": {"enabled": True, "window": "five minutes"}}, "pattern"),
        ({"responder": {"enabled": True, "replicas": 2}}, "'replicas' not allowed"),
        (
            {"responder": {"enabled": True, "probes": {"readiness": {"path": "/readyz"}}}},
            "/healthz",
        ),
    ],
    ids=[
        "wrong-type-enabled",
        "wrong-type-port",
        "wrong-type-resources",
        "wrong-type-mount-path",
        "url-without-scheme",
        "bad-window",
        "unknown-key",
        "unserved-probe-path",
    ],
)
def test_values_schema_rejects(helm, values, complaint):
    with pytest.raises(helm.RenderError, match="schema") as info:
        helm.render_values(values)
    assert complaint in str(info.value)


# -- the image --------------------------------------------------------------------------------


def _copies(text: str) -> list[str]:
    sources = []
    for line in text.splitlines():
        words = line.split()
        if words and words[0] == "COPY" and not any(w.startswith("--from=") for w in words):
            sources += [w for w in words[1:] if not w.startswith("--")][:-1]
    return sources


def test_dockerfile_copies_only_loadgen_telemetry_and_the_manifests():
    text = DOCKERFILE.read_text()
    manifests = ["pyproject.toml"] + [
        f"services/{s}/pyproject.toml"
        for s in ("telemetry", "preprocess", "classifier", "postprocess", "loadgen")
    ]
    assert _copies(text) == [*manifests, "services/telemetry/src", "services/loadgen/src"]
    assert "uv sync --active --no-dev --no-editable --package servescope-loadgen" in text
    assert text.count("FROM python:3.11-slim") == 2
    assert re.search(r"^USER 10001:10001$", text, re.MULTILINE)


def test_dockerfile_runs_the_responder_on_all_interfaces_where_the_chart_expects():
    text = DOCKERFILE.read_text()
    (cmd,) = re.findall(r"^CMD (.+)$", text, re.MULTILINE)
    assert yaml.safe_load(cmd) == ["python", "-m", "servescope.responder.app"]
    env = dict(re.findall(r"(SERVESCOPE_RESPONDER_[A-Z_]+)=(\S+)", text))
    assert env["SERVESCOPE_RESPONDER_HOST"] == "0.0.0.0"
    port = VALUES["responder"]["port"]
    assert env["SERVESCOPE_RESPONDER_PORT"] == str(port)
    assert re.search(rf"^EXPOSE {port}$", text, re.MULTILINE)
    incidents = VALUES["responder"]["incidents"]["mountPath"]
    assert env["SERVESCOPE_RESPONDER_INCIDENT_DIR"] == incidents
    # The directory exists in the image, owned by the user that writes it.
    assert f"mkdir -p {incidents}" in text
    assert "chown -R 10001:10001 " + str(Path(incidents).parent) in text
    # Every variable the image sets is a setting of the responder.
    prefix = ResponderSettings.model_config["env_prefix"]
    for key in env:
        assert key.removeprefix(prefix).lower() in ResponderSettings.model_fields, key


def test_skaffold_builds_the_image_and_hands_it_to_the_responder():
    (artifact,) = [a for a in SKAFFOLD["build"]["artifacts"] if a["image"] == "servescope-loadgen"]
    assert artifact["docker"]["dockerfile"] == "services/loadgen/Dockerfile"
    assert VALUES["responder"]["image"]["repository"] == artifact["image"]
    (release,) = SKAFFOLD["deploy"]["helm"]["releases"]
    assert release["setValueTemplates"]["responder.image.tag"] == (
        "{{.IMAGE_TAG_servescope_loadgen}}"
    )


# -- kube-prometheus-stack's Alertmanager -----------------------------------------------------


def _webhook_urls(config: dict[str, Any]) -> list[str]:
    return [
        webhook["url"]
        for receiver in config.get("receivers", [])
        for webhook in receiver.get("webhook_configs", [])
    ]


def test_kubernetes_alertmanager_sends_the_webhooks_to_the_responder_service(helm):
    # The app as skaffold installs it (release and namespace), responder on.
    (release,) = SKAFFOLD["deploy"]["helm"]["releases"]
    assert (release["name"], release["namespace"]) == (helm.RELEASE, helm.NAMESPACE)
    rendered = helm.render([ADVANCED])
    service = rendered.named("Service", NAME)
    (port,) = service["spec"]["ports"]
    (webhook_path,) = _routes("POST")
    expected = (
        f"http://{service['metadata']['name']}.{service['metadata']['namespace']}"
        f".svc.cluster.local:{port['port']}{webhook_path}"
    )
    assert expected in rendered.notes
    # What `servescope stack install` gives kube-prometheus-stack as alertmanager.config.
    kps = next(r for r in stack_cli.load_stack(ROOT).releases if r.name == "kube-prometheus-stack")
    generated = stack_cli.generated_values(ROOT, kps)
    assert generated is not None
    config = generated[1]["alertmanager"]["config"]
    urls = _webhook_urls(config)
    assert urls and set(urls) == {expected}
    # Derived from deploy/alertmanager/alertmanager.yml, not copied: the same routes,
    # receivers and inhibitions, only the responder's address differs.
    local = yaml.safe_load((ROOT / "deploy" / "alertmanager" / "alertmanager.yml").read_text())
    assert set(_webhook_urls(local)) == {"http://127.0.0.1:9095/alerts"}
    back, _ = stack_cli.replace_url_prefixes(
        config, {expected.removesuffix(webhook_path) + "/": "http://127.0.0.1:9095/"}
    )
    assert back == local
    # The app's network policy admits the Alertmanager pods of the stack's namespace.
    ingress = rendered.named("NetworkPolicy", NAME)["spec"]["ingress"]
    assert ingress[0]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": STACK["namespace"]
    }


def test_a_replacement_that_matches_nothing_is_an_error(tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "deploy" / "stack", root / "deploy" / "stack")
    (root / "deploy" / "alertmanager").mkdir(parents=True)
    moved = {
        "route": {"receiver": "page"},
        "receivers": [{"name": "page", "webhook_configs": [{"url": "http://127.0.0.1:9096/a"}]}],
    }
    (root / "deploy" / "alertmanager" / "alertmanager.yml").write_text(yaml.safe_dump(moved))
    kps = stack_cli.load_stack(root).releases[0]
    with pytest.raises(stack_cli.StackError, match="nothing in it starts with"):
        stack_cli.generated_values(root, kps)


def test_replace_url_prefixes_rewrites_only_matching_strings():
    value = {"a": ["http://127.0.0.1:9095/alerts", "http://other:9095/x", 9095], "b": None}
    out, matched = stack_cli.replace_url_prefixes(value, {"http://127.0.0.1:9095/": "http://r:1/"})
    assert out == {"a": ["http://r:1/alerts", "http://other:9095/x", 9095], "b": None}
    assert matched == {"http://127.0.0.1:9095/"}
    assert value["a"][0] == "http://127.0.0.1:9095/alerts"  # the input is left alone
