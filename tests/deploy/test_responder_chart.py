"""The alert responder on Kubernetes: its image (services/responder/Dockerfile), its entry of the
chart's `components:`, and kube-prometheus-stack's Alertmanager sending its webhooks to its
Service. It is an ordinary component: the generic checks (Kubernetes 1.32 strict validation,
labels, security posture, probes, resources, settings names, graceful shutdown) run over
ci/responder-values.yaml and the advanced profile in test_chart.py; these are its own."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from fastapi.routing import APIRoute

from servescope.cli import kube_stack as stack_cli
from servescope.responder.app import create_app
from servescope.responder.settings import Settings, env_names
from servescope.runtime.health import Health

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "servescope"
RESPONDER_VALUES = CHART / "ci" / "responder-values.yaml"
ADVANCED = ROOT / "deploy" / "helm" / "profiles" / "advanced.yaml"
DOCKERFILE = ROOT / "services" / "responder" / "Dockerfile"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
RESPONDER = VALUES["components"]["responder"]
STACK = yaml.safe_load((ROOT / "deploy" / "stack" / "stack.yaml").read_text())
SKAFFOLD = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
NAME = "servescope-responder"
ON = {"components": {"responder": {"enabled": True}}}


def _routes(method: str) -> set[str]:
    """What the responder's app really serves (the runtime's routes included)."""
    app = create_app(Settings(), Health("responder", "test"))
    return {
        route.path
        for route in app.routes
        if isinstance(route, APIRoute) and method in route.methods
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


# -- an ordinary component, only when enabled -----------------------------------------------


def test_off_by_default_and_on_only_where_switched_on(helm):
    assert RESPONDER["enabled"] is False
    for name in helm.CASES:
        rendered = helm.render(helm.CASES[name])
        objects = _responder_objects(rendered)
        values = helm.load_values(helm.CASES[name])
        if values.get("components", {}).get("responder", {}).get("enabled"):
            assert ("Deployment", NAME) in objects, name
        else:
            assert objects == [], f"{name} renders {objects}"
            assert "responder" not in rendered.notes, name


def test_enabled_renders_deployment_service_and_network_policy_only(helm):
    rendered = helm.render(values=ON)
    assert _responder_objects(rendered) == [
        ("Deployment", NAME),
        ("NetworkPolicy", NAME),
        ("Secret", NAME),  # its webhook token (secretFiles), test_cluster_security.py
        ("Service", NAME),
    ]
    # One replica, no autoscaler or disruption budget: the notes live in the pod.
    assert rendered.named("Deployment", NAME)["spec"]["replicas"] == 1
    # Without network policies (ci/minimal-values.yaml), Deployment and Service only.
    minimal = helm.render([CHART / "ci" / "minimal-values.yaml"], ON)
    assert _responder_objects(minimal) == [
        ("Deployment", NAME),
        ("Secret", NAME),
        ("Service", NAME),
    ]
    # The services are unchanged by it.
    assert {o["metadata"]["name"] for o in helm.render().objects} == {
        o["metadata"]["name"] for o in rendered.objects
    } - {NAME}


def test_no_template_code_is_keyed_on_its_name():
    """Only values make it what it is; the templates treat every component alike (NOTES may
    print its webhook URL)."""
    for template in sorted((CHART / "templates").glob("*")):
        if template.name == "NOTES.txt":
            continue
        actions = re.findall(r"\{\{.*?\}\}", template.read_text(), flags=re.DOTALL)
        code = [a for a in actions if not a.lstrip("{-").lstrip().startswith("/*")]
        assert not [a for a in code if "responder" in a], template.name


def test_the_old_top_level_key_is_refused(helm):
    with pytest.raises(helm.RenderError, match="'responder' not allowed"):
        helm.render_values({"responder": {"enabled": True}})


# -- image, environment, volumes ------------------------------------------------------------


def _container(helm: Any, files: list[Path], values: dict[str, Any] | None = None) -> Any:
    rendered = helm.render(files, values)
    deployment = rendered.named("Deployment", NAME)
    (container,) = helm.containers(deployment)
    return rendered, deployment, container


def test_environment_is_what_the_responder_reads(helm, monkeypatch):
    _, deployment, container = _container(helm, [RESPONDER_VALUES])
    env = helm.env_of(container)
    overrides = yaml.safe_load(RESPONDER_VALUES.read_text())["components"]["responder"]["env"]
    # Every SERVESCOPE_ variable is one of its settings (a typo would be silently ignored).
    assert {k for k in env if k.startswith("SERVESCOPE_")} <= set(env_names().values())
    for key in [k for k in os.environ if k.startswith("SERVESCOPE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("SERVESCOPE_"):
            monkeypatch.setenv(key, value)
    settings = Settings()  # what the process in the pod reads
    assert settings.host == "0.0.0.0"
    assert settings.port == container["ports"][0]["containerPort"] == RESPONDER["port"]
    assert settings.prometheus_url == RESPONDER["env"]["SERVESCOPE_RESPONDER_PROMETHEUS_URL"]
    assert settings.runbook_base_url == overrides["SERVESCOPE_RESPONDER_RUNBOOK_BASE_URL"]
    assert settings.trace_url_template == overrides["SERVESCOPE_RESPONDER_TRACE_URL_TEMPLATE"]
    assert settings.window == overrides["SERVESCOPE_RESPONDER_WINDOW"] == "10m"
    assert settings.max_traces == 10
    assert settings.runbook_dir is None  # the image holds no runbooks: exists is null
    # Alerts are rare: every trace and log line of the responder is kept.
    assert settings.trace_sample_ratio == settings.log_info_sample_ratio == 1.0
    # The notes go to an emptyDir, the only writable place besides /tmp; the secrets
    # directory (its webhook token, test_cluster_security.py) is read-only.
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"] if not m.get("readOnly")}
    assert set(mounts) == {"/tmp", str(settings.incident_dir)}
    for mount in mounts.values():
        assert "emptyDir" in volumes[mount["name"]], mount
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["image"] == f"servescope-responder:{rendered_app_version()}"


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
    assert RESPONDER["env"]["SERVESCOPE_RESPONDER_PROMETHEUS_URL"] == (
        f"http://{prometheus['name']}.{STACK['namespace']}.svc.cluster.local:{prometheus['port']}"
    )


def test_probes_and_scrapes_use_routes_the_responder_serves(helm):
    _, _, container = _container(helm, [ADVANCED])
    served = _routes("GET")
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in served, probe
    assert VALUES["monitoring"]["serviceMonitor"]["path"] in served


def test_memory_limit_leaves_headroom_over_the_measured_resident_set(helm):
    """Measured (values.yaml comment): 69 MiB resident after starting and writing a note."""
    _, _, container = _container(helm, [], ON)
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Mi") and int(limit[:-2]) >= 1.2 * 69


# -- network policy and scrapes -------------------------------------------------------------


def test_network_policy_admits_alertmanager_and_scrapes_and_reaches_prometheus(helm):
    rendered = helm.render([RESPONDER_VALUES])  # tracing and scrapes on
    spec = rendered.named("NetworkPolicy", NAME)["spec"]
    assert (
        spec["podSelector"]["matchLabels"]
        == (rendered.named("Deployment", NAME)["spec"]["selector"]["matchLabels"])
    )
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    scrapes, webhooks = spec["ingress"]  # no caller on the request path
    for rule in (scrapes, webhooks):
        assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
        (peer,) = rule["from"]
        assert peer["namespaceSelector"]["matchLabels"] == {
            "kubernetes.io/metadata.name": STACK["namespace"]
        }
    assert scrapes["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "prometheus"
    }
    assert webhooks["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "alertmanager"
    }
    dns, collector, prometheus = spec["egress"]
    assert sorted(p["port"] for p in dns["ports"]) == [53, 53]
    # Only the port of tracing.endpoint (OTLP/HTTP by default).
    assert sorted(p["port"] for p in collector["ports"]) == [4318]
    assert prometheus["ports"] == [
        {"port": _stack_service("prometheus")["port"], "protocol": "TCP"}
    ]
    assert prometheus["to"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "prometheus"
    }


def test_prometheus_egress_port_is_the_port_of_the_prometheus_url():
    url = urlsplit(RESPONDER["env"]["SERVESCOPE_RESPONDER_PROMETHEUS_URL"])
    port = url.port or (443 if url.scheme == "https" else 80)
    (egress,) = RESPONDER["networkPolicy"]["extraEgress"]
    assert [p["port"] for p in egress["ports"]] == [port]


def test_a_components_own_rules_stay_in_its_own_policy(helm):
    extra = {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": 1234}]}
    rendered = helm.render(
        values={"components": {"postprocess": {"networkPolicy": {"extraEgress": [extra]}}}}
    )
    for policy in rendered.of_kind("NetworkPolicy"):
        has = extra in policy["spec"]["egress"]
        assert has == (policy["metadata"]["name"] == "servescope-postprocess")


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


def test_the_service_monitor_scrapes_the_responder_as_job_responder(helm):
    rendered = helm.render([ADVANCED])
    (monitor,) = rendered.of_kind("ServiceMonitor")
    selected = {
        s["metadata"]["name"]: s["metadata"]["labels"]
        for s in rendered.of_kind("Service")
        if _selects(monitor["spec"]["selector"], s["metadata"]["labels"])
    }
    assert set(selected) == {
        f"servescope-{s}" for s in ("preprocess", "classifier", "postprocess", "responder")
    }
    assert selected[NAME][monitor["spec"]["jobLabel"]] == "responder"


# -- values schema ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"enabled": "yes"}, "want boolean"),
        ({"port": "9095"}, "want integer"),
        ({"resources": {"limits": {"memory": True}}}, "want"),
        ({"networkPolicy": {"extraEgress": {"to": []}}}, "want array"),
        ({"networkPolicy": {"egress": []}}, "'egress' not allowed"),
        ({"prometheusUrl": "http://prometheus:9090"}, "'prometheusUrl' not allowed"),
        ({"probes": {"readiness": {"path": "/alerts"}}}, "/readyz"),
    ],
    ids=[
        "wrong-type-enabled",
        "wrong-type-port",
        "wrong-type-resources",
        "wrong-type-extra-egress",
        "unknown-network-policy-key",
        "old-key",
        "unserved-probe-path",
    ],
)
def test_values_schema_rejects(helm, values, complaint):
    with pytest.raises(helm.RenderError, match="schema") as info:
        helm.render_values({"components": {"responder": {"enabled": True, **values}}})
    assert complaint in str(info.value)


# -- the image --------------------------------------------------------------------------------


def test_dockerfile_runs_the_responder_on_all_interfaces_where_the_chart_expects():
    """What every image must be (slim, non-root, pinned, its own folder only) is held by
    test_images.py; this is what the chart relies on."""
    text = DOCKERFILE.read_text()
    (cmd,) = re.findall(r"^CMD (.+)$", text, re.MULTILINE)
    assert yaml.safe_load(cmd) == ["python", "-m", "servescope.responder"]
    env = dict(re.findall(r"(SERVESCOPE_[A-Z_]+)=(\S+)", text))
    assert env["SERVESCOPE_HOST"] == "0.0.0.0"
    port = RESPONDER["port"]
    assert env["SERVESCOPE_PORT"] == str(port)
    assert re.search(rf"^EXPOSE {port}$", text, re.MULTILINE)
    incidents = RESPONDER["env"]["SERVESCOPE_RESPONDER_INCIDENT_DIR"]
    assert env["SERVESCOPE_RESPONDER_INCIDENT_DIR"] == incidents
    assert [m["mountPath"] for m in RESPONDER["extraVolumeMounts"]] == [incidents]
    # The directory exists in the image, owned by the user that writes it.
    assert f"mkdir -p {incidents}" in text
    assert "chown -R 10001:10001 " + str(Path(incidents).parent) in text
    # Every variable the image sets is a setting of the responder.
    assert set(env) <= set(env_names().values())


def test_skaffold_builds_the_image_and_hands_it_to_the_responder():
    (artifact,) = [a for a in SKAFFOLD["build"]["artifacts"] if a["image"] == NAME]
    assert artifact["docker"]["dockerfile"] == "services/responder/Dockerfile"
    assert RESPONDER["image"]["repository"] == artifact["image"]
    (release,) = SKAFFOLD["deploy"]["helm"]["releases"]
    assert release["setValueTemplates"]["components.responder.image.tag"] == (
        "{{.IMAGE_TAG_servescope_responder}}"
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
    # kube-prometheus-stack's own routes (Watchdog and InfoInhibitor to "null", its
    # inhibitions) are added around the file's by the spec's set/prepend/append, and the
    # webhooks to the responder carry its token (webhookHttpConfig; test_cluster_security.py).
    (spec,) = kps.yaml_files
    (http_config,) = spec["webhookHttpConfig"].values()
    with_token, _ = stack_cli.add_webhook_http_config(
        local, {"http://127.0.0.1:9095/": http_config}
    )
    assert back == stack_cli.apply_overlay(with_token, spec)
    # The app's network policy admits the Alertmanager pods of the stack's namespace.
    ingress = rendered.named("NetworkPolicy", NAME)["spec"]["ingress"]
    (webhooks,) = [
        rule
        for rule in ingress
        if rule["from"][0]["podSelector"]["matchLabels"]
        == {"app.kubernetes.io/name": "alertmanager"}
    ]
    assert webhooks["from"][0]["namespaceSelector"]["matchLabels"] == {
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
