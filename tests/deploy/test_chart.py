"""The application chart, rendered by Helm's own engine for the default values, every ci/*.yaml
and every skaffold profile: lint, Kubernetes 1.32 schemas, values schema, security posture,
resources and probes, graceful shutdown, network path, and agreement with the services' code."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "servescope"
CI_FILES = sorted((CHART / "ci").glob("*.yaml"))
SERVICES = ("preprocess", "classifier", "postprocess")
OBSERVABILITY = CHART / "ci" / "observability-values.yaml"


def _quantity(value: str | int | float) -> float:
    """A Kubernetes quantity as a number (cores or bytes)."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in sorted(units.items(), key=lambda item: -len(item[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


# -- engine, lint, schemas ----------------------------------------------------------------


@pytest.mark.parametrize(
    "values_file", [None, *CI_FILES], ids=["default", *(p.name for p in CI_FILES)]
)
def test_lint_strict(helm, values_file):
    values = helm.load_values([values_file] if values_file else [])
    assert helm.lint(values) == [], f"helm lint --strict ({helm.engine()})"


def test_every_case_renders_the_three_services(case, helm):
    name, rendered = case
    deployments = {helm.component_of(d) for d in rendered.of_kind("Deployment")}
    services = {helm.component_of(s) for s in rendered.of_kind("Service")}
    assert set(SERVICES) <= deployments == services, name


def test_every_object_is_valid_kubernetes_1_32(case, helm):
    name, rendered = case
    for obj in rendered.objects:
        kind = obj["kind"]
        if kind in helm.PROMETHEUS_OPERATOR_KINDS:
            continue  # custom resources: checked by their own tests below
        try:
            kubernetes_validate.validate(obj, helm.KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{name}: {kind} {obj['metadata']['name']}: {exc.message} at {list(exc.path)}"
            )


CLUSTER_SCOPED = {"PriorityClass"}


def test_every_object_is_namespaced_and_labelled(case, helm):
    name, rendered = case
    for obj in rendered.objects:
        meta = obj["metadata"]
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in meta, (name, meta["name"])
        else:
            assert meta["namespace"] == helm.NAMESPACE, (name, meta["name"])
        labels = meta["labels"]
        for key in (
            "helm.sh/chart",
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
            "app.kubernetes.io/part-of",
        ):
            assert key in labels, f"{name}: {obj['kind']} {meta['name']} lacks label {key}"


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"components": {"classifier": {"port": "8001"}}}, "want integer"),
        ({"shutdown": {"drainSeconds": "5s"}}, "want integer"),
        ({"tracing": {"enabled": "yes"}}, "want boolean"),
        ({"tracing": {"enabld": True}}, "'enabld' not allowed"),
        ({"components": {"classifier": {"replica": 2}}}, "'replica' not allowed"),
        ({"unknownTopLevel": 1}, "'unknownTopLevel' not allowed"),
        ({"components": {"preprocess": {"probes": {"liveness": {"path": "/live"}}}}}, "/healthz"),
    ],
    ids=[
        "wrong-type-port",
        "wrong-type-drain",
        "wrong-type-bool",
        "unknown-key",
        "unknown-component-key",
        "unknown-top-level",
        "unserved-probe-path",
    ],
)
def test_values_schema_rejects(helm, values, complaint):
    with pytest.raises(helm.RenderError, match="schema") as info:
        helm.render_values(values)
    assert complaint in str(info.value)


def test_values_schema_accepts_every_shipped_values_file(helm):
    for path in [*CI_FILES, *sorted(helm.PROFILES.glob("*.yaml"))]:
        helm.render_values(helm.load_values([path]))


# -- security posture ---------------------------------------------------------------------


def test_security_posture_of_every_workload(case, helm):
    name, rendered = case
    for deployment in rendered.of_kind("Deployment"):
        where = f"{name}: {deployment['metadata']['name']}"
        pod = deployment["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, where
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), (
            where
        )
        pod_sc = pod["securityContext"]
        assert pod_sc["runAsNonRoot"] is True, where
        assert pod_sc["runAsUser"] != 0, where
        assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault", where
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert not any("hostPath" in v for v in volumes.values()), where
        for container in pod["containers"] + pod.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc.get("privileged", False) is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert not sc["capabilities"].get("add"), where
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{where}: /tmp must be an emptyDir"
    for account in rendered.of_kind("ServiceAccount"):
        assert account["automountServiceAccountToken"] is False, name


# -- resources and probes -----------------------------------------------------------------


def _served_health_paths() -> set[str]:
    """The health routes the services really register (servescope.runtime.health)."""
    from fastapi import FastAPI

    from servescope.runtime.health import Health, add_health_routes

    app = FastAPI()
    add_health_routes(app, Health("probe-check", "0"))
    return {route.path for route in app.routes}  # type: ignore[attr-defined]


def test_resources_and_three_probes_on_every_container(case, helm):
    name, rendered = case
    served = _served_health_paths()
    assert {"/healthz", "/readyz"} <= served
    for deployment in rendered.of_kind("Deployment"):
        for container in helm.containers(deployment):
            where = f"{name}: {deployment['metadata']['name']}/{container['name']}"
            resources = container["resources"]
            for resource in ("cpu", "memory"):
                request = _quantity(resources["requests"][resource])
                limit = _quantity(resources["limits"][resource])
                assert 0 < request <= limit, f"{where}: {resource} request {request} limit {limit}"
            ports = {p["name"] for p in container["ports"]}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                http = container[probe]["httpGet"]
                assert http["path"] in served, f"{where}: {probe} on {http['path']}, not served"
                assert http["port"] in ports, f"{where}: {probe} on unknown port {http['port']}"
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", where
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", where


def test_classifier_startup_probe_covers_model_load(helm):
    deployment = helm.render().named("Deployment", "servescope-classifier")
    probe = helm.containers(deployment)[0]["startupProbe"]
    assert probe["httpGet"]["path"] == "/readyz"  # ready = model loaded + one warm-up inference
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 60


def test_memory_limits_leave_headroom_over_the_measured_working_set(helm):
    """Measured (values.yaml comments): classifier 102 MiB, preprocess 87 MiB steady and 422 MiB
    with eight maximum-size uploads at once, postprocess 70 MiB."""
    measured_mib = {"classifier": 102, "preprocess": 422, "postprocess": 70}
    rendered = helm.render()
    for component, working_set in measured_mib.items():
        container = helm.containers(rendered.named("Deployment", f"servescope-{component}"))[0]
        limit_mib = _quantity(container["resources"]["limits"]["memory"]) / 2**20
        assert limit_mib >= 1.2 * working_set, (component, limit_mib)


# -- graceful shutdown --------------------------------------------------------------------


def test_termination_grace_covers_prestop_drain_and_in_flight(case, helm):
    name, rendered = case
    for deployment in rendered.of_kind("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"]:
            env = helm.env_of(container)
            drain = float(env["SERVESCOPE_DRAIN_SECONDS"])
            graceful = float(env["SERVESCOPE_GRACEFUL_TIMEOUT_SECONDS"])
            pre_stop = container.get("lifecycle", {}).get("preStop", {})
            sleep = pre_stop.get("sleep", {}).get("seconds", 0)
            if "exec" in pre_stop:
                sleep = int(pre_stop["exec"]["command"][-1])
            assert pod["terminationGracePeriodSeconds"] >= sleep + drain + graceful, name


def test_default_shutdown_has_a_prestop_delay_and_a_drain(helm):
    container = helm.containers(helm.render().named("Deployment", "servescope-preprocess"))[0]
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] >= 3
    assert float(helm.env_of(container)["SERVESCOPE_DRAIN_SECONDS"]) > 0


def test_a_grace_period_shorter_than_the_shutdown_fails_to_render(helm):
    with pytest.raises(helm.RenderError, match="shorter than"):
        helm.render_values({"shutdown": {"terminationGracePeriodSeconds": 10}})


# -- the chart matches the services' code -------------------------------------------------


def _settings_fields(component: str) -> set[str]:
    """The environment variables a service reads: its field names, or their aliases."""
    import importlib

    settings = importlib.import_module(f"servescope.{component}.settings").Settings
    prefix = settings.model_config["env_prefix"]
    return {
        field.validation_alias
        if isinstance(field.validation_alias, str)
        else f"{prefix}{name}".upper()
        for name, field in settings.model_fields.items()
    }


def test_every_servescope_variable_is_a_setting_of_that_service(case, helm):
    """A typo in a variable name would be silently ignored by pydantic-settings."""
    name, rendered = case
    for deployment in rendered.of_kind("Deployment"):
        component = helm.component_of(deployment)
        if component not in (*SERVICES, "responder"):
            component = "classifier"  # ci/extra-component-values.yaml: a second classifier
        fields = _settings_fields(component)
        for variable in helm.env_of(helm.containers(deployment)[0]):
            if variable.startswith("SERVESCOPE_"):
                assert variable in fields, f"{name}: {component} has no setting {variable}"


def test_ports_match_the_images_and_the_settings(helm):
    rendered = helm.render()
    for component in SERVICES:
        container = helm.containers(rendered.named("Deployment", f"servescope-{component}"))[0]
        port = container["ports"][0]["containerPort"]
        dockerfile = (ROOT / "services" / component / "Dockerfile").read_text()
        assert f"EXPOSE {port}" in dockerfile
        assert helm.env_of(container)["SERVESCOPE_PORT"] == str(port)


def test_edge_reaches_the_other_services_by_their_service_names(case, helm):
    name, rendered = case
    edge = helm.containers(rendered.named("Deployment", "servescope-preprocess"))[0]
    env = helm.env_of(edge)
    for callee in ("classifier", "postprocess"):
        service = rendered.named("Service", f"servescope-{callee}")
        url = f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
        assert env[f"SERVESCOPE_{callee.upper()}_URL"] == url, name


def test_images_default_to_local_names_and_app_version(helm):
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    for deployment in helm.render().of_kind("Deployment"):
        image = helm.containers(deployment)[0]["image"]
        assert image == f"servescope-{helm.component_of(deployment)}:{chart['appVersion']}"
    production = helm.render(list(helm.PRODUCTION))
    for deployment in production.of_kind("Deployment"):
        container = helm.containers(deployment)[0]
        assert "@sha256:" in container["image"], container["image"]
        assert container["imagePullPolicy"] == "Always"


def test_production_values_refuse_an_image_without_its_digest(helm):
    with pytest.raises(helm.RenderError, match=r"has no digest, and image\.requireDigest is on"):
        helm.render([helm.PRODUCTION[0]])


# -- tracing and logging environment ------------------------------------------------------


def test_tracing_environment_only_when_enabled(helm):
    off = helm.render()
    for deployment in off.of_kind("Deployment"):
        assert not [k for k in helm.env_of(helm.containers(deployment)[0]) if k.startswith("OTEL_")]
    on = helm.render([OBSERVABILITY])
    for deployment in on.of_kind("Deployment"):
        env = helm.env_of(helm.containers(deployment)[0])
        assert env["OTEL_SERVICE_NAME"] == helm.component_of(deployment)
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://otel-collector.monitoring.")
        # The responder keeps every trace of its own (its env), whatever the request path's.
        expected_ratio = "1.0" if helm.component_of(deployment) == "responder" else "0.25"
        assert env["SERVESCOPE_TRACE_SAMPLE_RATIO"] == expected_ratio
        assert "k8s.pod.name=$(POD_NAME)" in env["OTEL_RESOURCE_ATTRIBUTES"]
        assert env["SERVESCOPE_LOG_LEVEL"] == "debug"
        names = [e["name"] for e in helm.containers(deployment)[0]["env"]]
        assert names.index("POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES")
        assert len(names) == len(set(names)), "duplicate environment variables"


def test_log_sampling_reaches_the_services(helm):
    for files, expected in (([], "0.1"), ([helm.PROFILES / "beginner.yaml"], "1")):
        for deployment in helm.render(files).of_kind("Deployment"):
            env = helm.env_of(helm.containers(deployment)[0])
            if helm.component_of(deployment) == "responder":
                expected = "1.0"  # its own env: every line of the responder is kept
            assert env["SERVESCOPE_LOG_INFO_SAMPLE_RATIO"] == expected


def test_component_env_overrides_computed_settings(helm):
    rendered = helm.render(
        values={"components": {"classifier": {"env": {"SERVESCOPE_LOG_LEVEL": "warning"}}}}
    )
    container = helm.containers(rendered.named("Deployment", "servescope-classifier"))[0]
    names = [e["name"] for e in container["env"]]
    assert names.count("SERVESCOPE_LOG_LEVEL") == 1
    assert helm.env_of(container)["SERVESCOPE_LOG_LEVEL"] == "warning"


# -- autoscaling, disruption budgets, spreading -------------------------------------------


def test_autoscalers_budgets_and_spread_select_their_own_pods(case, helm):
    name, rendered = case
    deployments = {d["metadata"]["name"]: d for d in rendered.of_kind("Deployment")}
    for hpa in rendered.of_kind("HorizontalPodAutoscaler"):
        target = deployments[hpa["spec"]["scaleTargetRef"]["name"]]
        assert "replicas" not in target["spec"], f"{name}: HPA and a fixed replica count fight"
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    for pdb in rendered.of_kind("PodDisruptionBudget"):
        selected = [
            d for d in deployments.values()
            if pdb["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]  # fmt: skip
        assert [d["metadata"]["name"] for d in selected] == [pdb["metadata"]["name"]], name
    for deployment in deployments.values():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        for constraint in deployment["spec"]["template"]["spec"].get(
            "topologySpreadConstraints", []
        ):
            assert constraint["labelSelector"]["matchLabels"].items() <= labels.items(), name


def test_default_and_production_autoscale_on_cpu(helm):
    # CPU comes from metrics-server; a Pods metric such as in-flight requests would need a
    # custom-metrics API (prometheus-adapter) that the stack does not install
    # (test_cluster_rules.py::test_autoscalers_use_only_metrics_the_cluster_serves).
    default = helm.render().named("HorizontalPodAutoscaler", "servescope-preprocess")
    assert default["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    production = helm.render(list(helm.PRODUCTION))
    edge = production.named("HorizontalPodAutoscaler", "servescope-preprocess")
    assert edge["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert (
        production.named("HorizontalPodAutoscaler", "servescope-classifier")["spec"]["minReplicas"]
        == 2
    )


def test_a_component_can_turn_off_what_the_default_turns_on(helm):
    rendered = helm.render(
        values={
            "components": {
                "postprocess": {
                    "autoscaling": {"enabled": False},
                    "podDisruptionBudget": {"enabled": False},
                    "replicas": 3,
                }
            }
        }
    )
    assert "servescope-postprocess" not in {
        h["metadata"]["name"] for h in rendered.of_kind("HorizontalPodAutoscaler")
    }
    assert "servescope-postprocess" not in {
        p["metadata"]["name"] for p in rendered.of_kind("PodDisruptionBudget")
    }
    assert rendered.named("Deployment", "servescope-postprocess")["spec"]["replicas"] == 3


def test_minimal_values_render_no_optional_objects(helm):
    rendered = helm.render([CHART / "ci" / "minimal-values.yaml"])
    kinds = {o["kind"] for o in rendered.objects}
    assert kinds == {"Deployment", "Service"}
    for deployment in rendered.of_kind("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "default"
        assert "lifecycle" not in pod["containers"][0]


def test_adding_a_component_is_a_values_change(helm):
    rendered = helm.render([CHART / "ci" / "extra-component-values.yaml"])
    name = "servescope-classifier-canary"
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"):
        rendered.named(kind, name)
    container = helm.containers(rendered.named("Deployment", name))[0]
    assert {"name": "scratch", "mountPath": "/var/lib/servescope/scratch"} in container[
        "volumeMounts"
    ]


# -- network policies ---------------------------------------------------------------------


def _pods_selected(rendered, selector: dict[str, Any]) -> set[str]:
    return {
        d["metadata"]["name"]
        for d in rendered.of_kind("Deployment")
        if selector.get("matchLabels", {}).items()
        <= d["spec"]["template"]["metadata"]["labels"].items()
    }


def test_network_policies_allow_only_the_request_path_and_scrapes(helm):
    rendered = helm.render([OBSERVABILITY])
    policies = {p["metadata"]["name"]: p for p in rendered.of_kind("NetworkPolicy")}
    assert set(policies) == {f"servescope-{s}" for s in (*SERVICES, "responder")}
    for name, policy in policies.items():
        assert _pods_selected(rendered, policy["spec"]["podSelector"]) == {name}
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    # The edge: open on its port; it may call the classifier and postprocess only.
    edge = policies["servescope-preprocess"]["spec"]
    assert edge["ingress"][0] == {"ports": [{"port": "http", "protocol": "TCP"}]}
    callees = set()
    for rule in edge["egress"]:
        for peer in rule["to"]:
            if "namespaceSelector" not in peer:
                callees |= _pods_selected(rendered, peer["podSelector"])
    assert callees == {"servescope-classifier", "servescope-postprocess"}
    # Downstreams: only the edge (request path) and Prometheus (scrapes).
    for downstream in ("classifier", "postprocess"):
        spec = policies[f"servescope-{downstream}"]["spec"]
        request_path, scrapes = spec["ingress"]
        assert {
            n for p in request_path["from"] for n in _pods_selected(rendered, p["podSelector"])
        } == {"servescope-preprocess"}
        assert scrapes["from"][0]["podSelector"]["matchLabels"] == {
            "app.kubernetes.io/name": "prometheus"
        }
        assert all(
            rule["ports"] == [{"port": "http", "protocol": "TCP"}] for rule in spec["ingress"]
        )
        # Egress: DNS and, with tracing on, the collector; nothing else.
        ports = sorted(p["port"] for rule in spec["egress"] for p in rule["ports"])
        assert ports == [53, 53, 4318], downstream  # DNS, and the port of tracing.endpoint


# -- Prometheus Operator objects ----------------------------------------------------------


def _served_metrics_paths() -> set[str]:
    """The metrics route the services really register (servescope.telemetry.metrics)."""
    from fastapi import FastAPI

    from servescope.telemetry.metrics import ServiceMetrics, add_metrics_route

    app = FastAPI()
    add_metrics_route(app, ServiceMetrics("classifier"))
    return {route.path for route in app.routes}  # type: ignore[attr-defined]


def test_service_monitor_selects_every_service_and_its_port(helm):
    served = _served_metrics_paths()
    rendered = helm.render([OBSERVABILITY])
    (monitor,) = rendered.of_kind("ServiceMonitor")
    spec = monitor["spec"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert spec["namespaceSelector"] == {"matchNames": [helm.NAMESPACE]}
    selected = [
        s for s in rendered.of_kind("Service")
        if spec["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]  # fmt: skip
    assert {helm.component_of(s) for s in selected} == {*SERVICES, "responder"}
    for service in selected:
        assert spec["jobLabel"] in service["metadata"]["labels"]
        port_names = {p["name"] for p in service["spec"]["ports"]}
        for endpoint in spec["endpoints"]:
            assert endpoint["port"] in port_names
            assert endpoint["path"] in served
    assert spec["endpoints"][0]["metricRelabelings"][0]["action"] == "drop"


def test_no_prometheus_operator_objects_by_default(helm):
    kinds = {o["kind"] for o in helm.render().objects}
    assert not kinds & helm.PROMETHEUS_OPERATOR_KINDS


def _rule_files(globs: list[str]) -> set[str]:
    base = ROOT / "deploy" / "prometheus"
    found = set()
    for pattern in globs:
        # Helm's `**` matches across directories; Path.glob wants `**/*`.
        found |= {p.relative_to(base).as_posix() for p in base.glob(pattern.replace("**", "**/*"))}
    return found


def test_prometheus_rules_are_the_files_in_deploy_prometheus(helm, tmp_path):
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    expected = _rule_files(values["monitoring"]["prometheusRule"]["files"])
    assert expected, "deploy/prometheus/rules/ has no rule file to render"
    rendered = helm.render([OBSERVABILITY])
    rules = rendered.of_kind("PrometheusRule")
    sources = {r["metadata"]["annotations"]["servescope.dev/source"]: r for r in rules}
    assert set(sources) == {f"deploy/prometheus/{p}" for p in expected}
    for source, rule in sources.items():
        # The spec is the file itself, byte for byte in meaning.
        assert rule["spec"] == yaml.safe_load((ROOT / source).read_text()), source
        assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert len(rule["metadata"]["name"]) <= 63


def test_prometheus_rule_contents_pass_promtool(helm, tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(
            "promtool not found: install Debian's `prometheus` package (scripts/bootstrap.sh does)"
        )
    rendered = helm.render([OBSERVABILITY])
    files = []
    for index, rule in enumerate(rendered.of_kind("PrometheusRule")):
        path = tmp_path / f"rule-{index}.yml"
        path.write_text(yaml.safe_dump(rule["spec"]))
        files.append(str(path))
    assert files
    result = subprocess.run([promtool, "check", "rules", *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_are_read_through_a_symlink_not_a_copy():
    link = CHART / "files" / "prometheus"
    assert link.is_symlink(), "files/prometheus must link to deploy/prometheus, not copy it"
    assert link.resolve() == (ROOT / "deploy" / "prometheus").resolve()
    for path in CHART.rglob("*"):
        if path.is_symlink():
            target = path.resolve()
            assert target.exists(), f"{path} dangles: Helm refuses to load the chart"
            assert ROOT.resolve() in target.parents, f"{path} points outside the repository"


def test_a_packaged_chart_carries_the_rule_files(helm, tmp_path):
    """`helm package` follows the link, so a published chart needs no checkout."""
    import tarfile

    helm_cli = shutil.which("helm")
    if helm_cli:
        subprocess.run(
            [helm_cli, "package", str(CHART), "--destination", str(tmp_path)], check=True
        )
        (archive,) = tmp_path.glob("*.tgz")
    else:
        import helm_python

        archive = Path(helm_python.package(CHART, destination=tmp_path))
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    rules = ROOT / "deploy" / "prometheus" / "rules"
    for rule in rules.glob("*.y*ml"):
        assert f"servescope/files/prometheus/rules/{rule.name}" in names


def test_dashboards_render_one_configmap_per_json_file(helm, tmp_path):
    # files/dashboards links to dashboards/: one ConfigMap per committed dashboard JSON.
    rendered = helm.render([OBSERVABILITY])
    shipped = {p.name for p in (ROOT / "dashboards").glob("*.json")}
    assert shipped
    configmaps = rendered.of_kind("ConfigMap")
    assert {name for c in configmaps for name in c["data"]} == shipped
    assert len(configmaps) == len(shipped)
    assert "no dashboard was installed" not in rendered.notes
    # The wiring, on a copy of the chart with one dashboard where the link points.
    chart = tmp_path / "servescope"
    shutil.copytree(CHART, chart, symlinks=False)
    dashboard = {"title": "Servescope overview", "panels": [{"legendFormat": "{{route}}"}]}
    shutil.rmtree(chart / "files" / "dashboards")
    (chart / "files" / "dashboards").mkdir()
    (chart / "files" / "dashboards" / "Servescope_Overview.json").write_text(
        yaml.safe_dump(dashboard, default_flow_style=True)
    )
    values = copy.deepcopy(helm.load_values([OBSERVABILITY]))
    (configmap,) = helm.render_values(values, chart=chart).of_kind("ConfigMap")
    assert configmap["metadata"]["name"] == "servescope-dashboard-servescope-overview"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"]["grafana_folder"] == "Servescope"
    assert yaml.safe_load(configmap["data"]["Servescope_Overview.json"]) == dashboard


# -- NOTES ----------------------------------------------------------------------------------


def test_notes_print_port_forwards_to_services_that_exist(case, helm):
    name, rendered = case
    services = {s["metadata"]["name"] for s in rendered.of_kind("Service")}
    forwards = [line.split() for line in rendered.notes.splitlines() if "port-forward svc/" in line]
    app = [f for f in forwards if f[2] == helm.NAMESPACE]
    assert app, f"{name}: NOTES name no port-forward to the edge"
    for words in app:
        service = words[4].removeprefix("svc/")
        assert service in services, f"{name}: NOTES forward to missing Service {service}"
        assert "/v1/predict" in rendered.notes
