"""skaffold.yaml: each artifact builds only its own service, the chart receives every image,
each profile's values render and validate, and every port-forward has a target."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SKAFFOLD = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
STACK = yaml.safe_load((ROOT / "deploy" / "stack" / "stack.yaml").read_text())
ARTIFACTS = SKAFFOLD["build"]["artifacts"]
PROFILES = SKAFFOLD["profiles"]
SERVICES = ("preprocess", "classifier", "postprocess")
# Every image skaffold builds: the three services and the alert responder, each an entry of
# the chart's `components:`, and where each one's repository and tag go in the values.
IMAGES = {f"servescope-{s}": f"components.{s}.image" for s in (*SERVICES, "responder")}


def _release(config: dict[str, Any]) -> dict[str, Any]:
    (release,) = config["deploy"]["helm"]["releases"]
    return release


def _apply_patches(config: dict[str, Any], patches: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON-patch subset skaffold profiles use here: add (with "-") and replace."""
    import copy

    patched = copy.deepcopy(config)
    for patch in patches:
        *parents, last = patch["path"].strip("/").split("/")
        node: Any = patched
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if patch["op"] == "add" and last == "-":
            node.append(patch["value"])
        elif patch["op"] in ("add", "replace"):
            if isinstance(node, list):
                node[int(last)] = patch["value"]
            else:
                node[last] = patch["value"]
        else:
            pytest.fail(f"patch op {patch['op']} is not handled by this test")
    return patched


def test_schema_version_and_chart_path():
    assert re.fullmatch(r"skaffold/v4beta\d+", SKAFFOLD["apiVersion"])
    assert SKAFFOLD["kind"] == "Config"
    release = _release(SKAFFOLD)
    assert (ROOT / release["chartPath"] / "Chart.yaml").is_file()
    assert {p["name"] for p in PROFILES} == {"beginner", "intermediate", "advanced"}


def test_one_artifact_per_service_built_from_its_dockerfile():
    assert sorted(a["image"] for a in ARTIFACTS) == sorted(IMAGES)
    for artifact in ARTIFACTS:
        service = artifact["image"].removeprefix("servescope-")
        assert artifact.get("context", ".") == "."  # the Dockerfiles build from the repo root
        assert artifact["docker"]["dockerfile"] == f"services/{service}/Dockerfile"
        assert (ROOT / artifact["docker"]["dockerfile"]).is_file()


# What each image copies and installs is checked in tests/deploy/test_images.py.


def test_the_chart_receives_every_built_image():
    templates = _release(SKAFFOLD)["setValueTemplates"]
    values = yaml.safe_load((ROOT / "deploy/helm/servescope/values.yaml").read_text())
    for artifact in ARTIFACTS:
        image = artifact["image"]
        key = re.sub(r"[^A-Za-z0-9]", "_", image)  # how skaffold names its template variables
        path = IMAGES[image]
        node = values
        for part in path.split("."):
            node = node[part]
        assert node["repository"] == image, path
        assert templates[f"{path}.repository"] == f"{{{{.IMAGE_REPO_{key}}}}}"
        assert templates[f"{path}.tag"] == f"{{{{.IMAGE_TAG_{key}}}}}"


def _profile_values(profile: dict[str, Any]) -> list[Path]:
    release = _release(_apply_patches(SKAFFOLD, profile.get("patches", [])))
    return [ROOT / path for path in release.get("valuesFiles", [])]


@pytest.mark.parametrize("profile", PROFILES, ids=[p["name"] for p in PROFILES])
def test_every_profile_renders_and_validates(profile, helm):
    files = _profile_values(profile)
    assert files, f"profile {profile['name']} switches nothing on"
    for path in files:
        assert path.is_file(), path
    # The images skaffold would pass (setValueTemplates), so what renders is what it deploys.
    overrides: dict[str, Any] = {}
    for image, path in IMAGES.items():
        node = overrides
        for part in path.split("."):
            node = node.setdefault(part, {})
        node.update({"repository": image, "tag": "dev-abc123"})
    rendered = helm.render(files, overrides)
    for obj in rendered.objects:
        if obj["kind"] not in helm.PROMETHEUS_OPERATOR_KINDS:
            kubernetes_validate.validate(obj, helm.KUBE_VERSION, strict=True)
    for deployment in rendered.of_kind("Deployment"):
        assert helm.containers(deployment)[0]["image"].endswith(":dev-abc123")
    assert rendered.of_kind("ServiceMonitor"), "every lab stage scrapes /metrics"


def test_profiles_switch_on_more_at_each_stage(helm):
    kinds = {}
    for profile in PROFILES:
        rendered = helm.render(_profile_values(profile))
        otel = any(
            e["name"].startswith("OTEL_")
            for d in rendered.of_kind("Deployment")
            for e in helm.containers(d)[0]["env"]
        )
        kinds[profile["name"]] = {o["kind"] for o in rendered.objects} | (
            {"tracing"} if otel else set()
        )
    assert kinds["beginner"] < kinds["intermediate"] <= kinds["advanced"]
    assert {"tracing"} <= kinds["intermediate"] - kinds["beginner"]
    # The beginner's dashboards read recorded series: the rules load from the first stage.
    assert {"ServiceMonitor", "PrometheusRule", "ConfigMap"} <= kinds["beginner"]


def test_port_forwards_target_services_that_exist(helm):
    app = helm.render()
    app_services = {s["metadata"]["name"]: s for s in app.of_kind("Service")}
    stack_services = {
        service["name"]: service
        for release in STACK["releases"]
        for service in release.get("services", {}).values()
    }
    wanted = {
        "servescope-preprocess",
        "kube-prometheus-stack-prometheus",
        "kube-prometheus-stack-grafana",
        "jaeger",
        "kube-prometheus-stack-alertmanager",
    }
    forwards = SKAFFOLD["portForward"]
    assert {f["resourceName"] for f in forwards} == wanted
    local_ports = [f["localPort"] for f in forwards]
    assert len(local_ports) == len(set(local_ports))
    for forward in forwards:
        assert forward["resourceType"] == "service"
        name, port = forward["resourceName"], forward["port"]
        if forward["namespace"] == _release(SKAFFOLD)["namespace"]:
            assert name in app_services, name
            assert port in [p["port"] for p in app_services[name]["spec"]["ports"]], name
        else:
            assert forward["namespace"] == STACK["namespace"], name
            assert name in stack_services, f"{name} is not a Service of deploy/stack/stack.yaml"
            assert stack_services[name]["port"] == port, name
