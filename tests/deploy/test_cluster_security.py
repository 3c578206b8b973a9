"""Issue #15's security items: the app's namespace enforces the Pod Security `restricted`
standard and every pod the chart renders meets it; the responder's webhook takes alerts only
with the bearer token, which the chart keeps in a Secret and Alertmanager sends.

No maintained Python library evaluates the Pod Security Standards (the tools that do, such as
kubescape, polaris and kube-score, are Go binaries; checkov has no PSS profile), so the
restricted profile's rules are written out below, one named check each, after
https://kubernetes.io/docs/concepts/security/pod-security-standards/ (restricted includes
baseline). A test breaks a real pod spec once per rule to show each check bites.
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from servescope.cli import kube_stack as stack_cli
from servescope.cli.local.alerting import (
    AlertmanagerProcess,
    ResponderProcess,
    alertmanager_binary,
    alertmanager_config,
)
from servescope.cli.local.services import free_port
from servescope.responder.settings import Settings, env_names
from servescope.runtime.settings import SECRETS_DIR

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE_FILE = ROOT / "deploy" / "helm" / "namespace.yaml"
STACK = yaml.safe_load((ROOT / "deploy" / "stack" / "stack.yaml").read_text())
KPS_VALUES = yaml.safe_load((ROOT / "deploy" / "stack" / "kube-prometheus-stack.yaml").read_text())
SKAFFOLD = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
RESPONDER = "servescope-responder"
TOKEN_ENV = "SERVESCOPE_RESPONDER_WEBHOOK_TOKEN"
PSA = "pod-security.kubernetes.io/"

# -- Pod Security Standards, restricted ---------------------------------------------------------

# https://kubernetes.io/docs/concepts/security/pod-security-standards/ (policy version 1.32).
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "Pod", "CronJob"}


def pod_specs(objects: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any], dict]]:
    """(kind/name, pod spec, pod metadata) of every object that makes pods."""
    for obj in objects:
        if obj["kind"] not in POD_KINDS:
            continue
        template = obj if obj["kind"] == "Pod" else obj["spec"]
        if obj["kind"] == "CronJob":
            template = obj["spec"]["jobTemplate"]["spec"]
        if obj["kind"] != "Pod":
            template = template["template"]
        yield (
            f"{obj['kind']}/{obj['metadata']['name']}",
            template["spec"],
            template.get("metadata", {}),
        )


def restricted_violations(spec: dict[str, Any], metadata: dict | None = None) -> list[str]:
    """What breaks the `restricted` profile, each prefixed with its rule's name."""
    found: list[str] = []
    pod_sc = spec.get("securityContext") or {}
    containers = [
        *spec.get("initContainers", []),
        *spec.get("containers", []),
        *spec.get("ephemeralContainers", []),
    ]
    annotations = (metadata or {}).get("annotations") or {}

    def contexts() -> Iterator[tuple[str, dict[str, Any]]]:
        yield "pod", pod_sc
        for c in containers:
            yield c["name"], c.get("securityContext") or {}

    # baseline
    for where, sc in contexts():
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            found.append(f"HostProcess: {where}")
        if sc.get("privileged"):
            found.append(f"Privileged containers: {where}")
        if sc.get("procMount", "Default") != "Default":
            found.append(f"/proc mount type: {where}")
        selinux = sc.get("seLinuxOptions") or {}
        if (
            selinux.get("type", "") not in SELINUX_TYPES
            or selinux.get("user")
            or selinux.get("role")
        ):
            found.append(f"SELinux: {where}")
        if (sc.get("appArmorProfile") or {}).get("type", "RuntimeDefault") not in (
            "RuntimeDefault", "Localhost",
        ):  # fmt: skip
            found.append(f"AppArmor: {where}")
    for key, value in annotations.items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            found.append(f"AppArmor: annotation {key}")
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            found.append(f"Host namespaces: {field}")
    for c in containers:
        for port in c.get("ports", []):
            if port.get("hostPort"):
                found.append(f"Host ports: {c['name']} {port['hostPort']}")
    for sysctl in pod_sc.get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            found.append(f"Sysctls: {sysctl['name']}")
    # restricted
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if "hostPath" in kinds:
            found.append(f"HostPath volumes: {volume['name']}")
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"Volume types: {volume['name']} {sorted(kinds)}")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    for c in containers:
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"Privilege escalation: {c['name']}")
        if sc.get("runAsNonRoot") is False or not (
            sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")
        ):
            found.append(f"Running as non-root: {c['name']}")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"Seccomp: {c['name']} {seccomp}")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            found.append(f"Capabilities: {c['name']} does not drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f"Capabilities: {c['name']} adds {sorted(caps['add'])}")
    for where, sc in contexts():
        if sc.get("runAsUser") == 0:
            found.append(f"Running as non-root user: {where}")
        if where == "pod" and pod_seccomp == "Unconfined":
            found.append("Seccomp: pod Unconfined")
    return found


def test_every_pod_the_chart_renders_meets_the_restricted_standard(case):
    name, rendered = case
    specs = list(pod_specs(rendered.objects))
    assert specs, f"{name} renders no pods"
    for where, spec, metadata in specs:
        assert restricted_violations(spec, metadata) == [], f"{name}: {where}"


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation of a pod spec: `path` is dotted, `containers.0` indexes a list."""

    def mutate(spec: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = spec
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value

    return mutate


MUTATIONS = {
    "HostProcess": _set("securityContext.windowsOptions.hostProcess", True),
    "Privileged containers": _set("containers.0.securityContext.privileged", True),
    "/proc mount type": _set("containers.0.securityContext.procMount", "Unmasked"),
    "SELinux": _set("securityContext.seLinuxOptions.type", "spc_t"),
    "AppArmor": _set("containers.0.securityContext.appArmorProfile.type", "Unconfined"),
    "Host namespaces": _set("hostPID", True),
    "Host ports": _set("containers.0.ports.0.hostPort", 8000),
    "Sysctls": _set("securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}]),
    "HostPath volumes": lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
    "Volume types": lambda s: s["volumes"].append(
        {"name": "n", "nfs": {"server": "x", "path": "/"}}
    ),
    "Privilege escalation": _set("containers.0.securityContext.allowPrivilegeEscalation", None),
    "Running as non-root": _set("containers.0.securityContext.runAsNonRoot", False),
    "Running as non-root user": _set("securityContext.runAsUser", 0),
    "Seccomp": lambda s: (
        _set("securityContext.seccompProfile", {"type": "Unconfined"})(s),
        _set("containers.0.securityContext.seccompProfile", None)(s),
    ),
    "Capabilities": _set("containers.0.securityContext.capabilities.add", ["SYS_ADMIN"]),
}


@pytest.mark.parametrize("rule", sorted(MUTATIONS))
def test_each_rule_catches_what_it_forbids(helm, rule):
    (_, spec, _), *_ = pod_specs(helm.render().objects)
    assert restricted_violations(spec) == []
    broken = copy.deepcopy(spec)
    MUTATIONS[rule](broken)
    assert [v for v in restricted_violations(broken) if v.startswith(rule + ":")], rule


def test_net_bind_service_is_the_one_capability_restricted_allows(helm):
    (_, cached, _), *_ = pod_specs(helm.render().objects)
    spec = copy.deepcopy(cached)  # the render is cached for every test in this process
    _set("containers.0.securityContext.capabilities.add", ["NET_BIND_SERVICE"])(spec)
    assert restricted_violations(spec) == []


def test_a_value_that_loosens_the_security_context_is_caught(helm):
    rendered = helm.render(
        values={"default": {"securityContext": {"allowPrivilegeEscalation": True}}}
    )
    (where, spec, metadata), *_ = pod_specs(rendered.objects)
    assert restricted_violations(spec, metadata) == [
        f"Privilege escalation: {spec['containers'][0]['name']}"
    ], where


# -- the namespace's Pod Security Admission labels ------------------------------------------------


def _namespace() -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all(NAMESPACE_FILE.read_text()) if d]
    return dict(doc)


def test_the_app_namespace_enforces_restricted(helm):
    namespace = _namespace()
    kubernetes_validate.validate(namespace, helm.KUBE_VERSION, strict=True)
    assert namespace["kind"] == "Namespace"
    assert namespace["metadata"]["name"] == helm.NAMESPACE
    labels = namespace["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[PSA + mode] == "restricted", mode
    # enforce is pinned to the Kubernetes minor the chart is validated against; audit and
    # warn follow the cluster, so a tightening warns before it refuses.
    minor = ".".join(helm.KUBE_VERSION.split(".")[:2])
    assert labels[PSA + "enforce-version"] == f"v{minor}"
    assert labels[PSA + "audit-version"] == labels[PSA + "warn-version"] == "latest"


def test_the_stack_runs_apart_in_a_namespace_labelled_privileged(helm):
    """node-exporter needs hostNetwork, hostPID and hostPath, which `baseline` and
    `restricted` forbid: the stack cannot share the app's namespace, and its own says
    `privileged` so that a cluster with a stricter default still admits it."""
    stack = stack_cli.load_stack(ROOT)
    assert stack.namespace != _namespace()["metadata"]["name"]
    assert stack.namespace_manifest
    path = ROOT / "deploy" / "stack" / stack.namespace_manifest
    (namespace,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    kubernetes_validate.validate(namespace, helm.KUBE_VERSION, strict=True)
    assert namespace["kind"] == "Namespace"
    assert namespace["metadata"]["name"] == stack.namespace
    assert namespace["metadata"]["labels"][PSA + "enforce"] == "privileged"
    # `servescope stack install` applies it before any release, in the chosen context.
    commands = stack_cli.install_commands(
        stack, ROOT, kube_context="minikube", write_generated=False
    )
    assert commands[0] == [
        "kubectl", "--context", "minikube", "apply", "-f", path.relative_to(ROOT).as_posix(),
    ]  # fmt: skip
    assert all(c[0] == "helm" for c in commands[1:])


def test_every_install_path_applies_the_namespace_before_the_chart():
    apply = ["kubectl", "apply", "-f", NAMESPACE_FILE.relative_to(ROOT).as_posix()]
    # skaffold: a before-deploy hook, and Helm does not create the namespace itself.
    helm_deploy = SKAFFOLD["deploy"]["helm"]
    assert [h["host"]["command"] for h in helm_deploy["hooks"]["before"]] == [apply]
    (release,) = helm_deploy["releases"]
    assert release["namespace"] == _namespace()["metadata"]["name"]
    assert release.get("createNamespace") is not True
    # The documented helm installs: the apply comes first, and no --create-namespace.
    for doc in (ROOT / "README.md", ROOT / "deploy" / "helm" / "servescope" / "README.md"):
        text = doc.read_text()
        installs = [
            line for line in text.splitlines() if "helm upgrade --install servescope" in line
        ]
        assert installs, doc
        for line in installs:
            assert "--create-namespace" not in line, (doc, line)
            assert text.index(" ".join(apply)) < text.index(line), (doc, line)
    cluster_test = (ROOT / "tests" / "cluster" / "test_cluster.py").read_text()
    assert str(apply).replace("'", '"') in cluster_test


# -- the responder's webhook token -----------------------------------------------------------------


def _responder_cases(helm: Any) -> list[str]:
    return [
        name
        for name, files in helm.CASES.items()
        if helm.load_values(files).get("components", {}).get("responder", {}).get("enabled")
    ]


def _secret_files(helm: Any, deployment: dict[str, Any]) -> dict[str, dict[str, str]]:
    """File name in the secrets directory -> the Secret and key it holds, from the pod's one
    read-only projected volume there."""
    (container,) = helm.containers(deployment)
    pod = deployment["spec"]["template"]["spec"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(SECRETS_DIR)]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["projected"]["defaultMode"] == 0o440  # group: the pod's fsGroup
    assert pod["securityContext"]["fsGroup"] == container["securityContext"]["runAsGroup"]
    return {
        item["path"]: {"name": source["secret"]["name"], "key": item["key"]}
        for source in volume["projected"]["sources"]
        for item in source["secret"]["items"]
    }


def _token_ref(helm: Any, rendered: Any) -> dict[str, str]:
    deployment = rendered.named("Deployment", RESPONDER)
    (container,) = helm.containers(deployment)
    assert TOKEN_ENV not in {e["name"] for e in container.get("env", [])}, "a file, never env"
    return _secret_files(helm, deployment)[TOKEN_ENV]


def test_the_responder_reads_its_webhook_token_from_a_secret_the_render_creates(helm):
    cases = _responder_cases(helm)
    assert {"profile/beginner", "profile/intermediate", "profile/advanced"} <= set(cases)
    assert TOKEN_ENV in env_names().values()
    for name in cases:
        rendered = helm.render(helm.CASES[name])
        ref = _token_ref(helm, rendered)
        secret = rendered.named("Secret", ref["name"])
        token = __import__("base64").b64decode(secret["data"][ref["key"]]).decode()
        assert len(token) >= 32 and token.isalnum(), name
        assert secret["metadata"]["namespace"] == helm.NAMESPACE


def test_an_existing_secret_replaces_the_generated_one(helm):
    mine = {"existingSecret": "my-hook", "key": "t"}
    rendered = helm.render(
        values={"components": {"responder": {"enabled": True, "secretFiles": {TOKEN_ENV: mine}}}}
    )
    assert _token_ref(helm, rendered) == {"name": "my-hook", "key": "t"}
    assert rendered.of_kind("Secret") == []


def test_a_plain_token_value_is_refused(helm):
    with pytest.raises(helm.RenderError, match="is a secret"):
        helm.render_values(
            {"components": {"responder": {"enabled": True, "env": {TOKEN_ENV: "hunter2"}}}}
        )


def test_no_rendered_configuration_passes_a_secret_as_env(helm, case):
    """CKV_K8S_35: secrets are files. Every render, the faults' admin token included."""
    name, rendered = case
    faulty = helm.render(
        helm.CASES[name],
        {"default": {"faults": {"enabled": True, "existingSecret": "servescope-admin"}}},
    )
    for each in (rendered, faulty):
        for deployment in each.of_kind("Deployment"):
            for container in helm.containers(deployment):
                for entry in container.get("env", []):
                    assert "secretKeyRef" not in entry.get("valueFrom", {}), (name, entry)
                    assert not entry["name"].endswith("_TOKEN"), (name, entry["name"])
                assert not any("secretRef" in e for e in container.get("envFrom", [])), name
    for deployment in faulty.of_kind("Deployment"):
        files = _secret_files(helm, deployment)
        assert files["SERVESCOPE_ADMIN_TOKEN"] == {"name": "servescope-admin", "key": "token"}


def test_the_rendered_token_file_is_what_the_responder_reads(helm, tmp_path):
    """Lay the render's Secret out as the kubelet does (a file per item, named by its path)
    and read it with the responder's own settings: the env copy loses to the file."""
    rendered = helm.render(values={"components": {"responder": {"enabled": True}}})
    files = _secret_files(helm, rendered.named("Deployment", RESPONDER))
    for path, ref in files.items():
        data = rendered.named("Secret", ref["name"])["data"][ref["key"]]
        (tmp_path / path).write_bytes(__import__("base64").b64decode(data))
    token = (tmp_path / TOKEN_ENV).read_text()
    settings = Settings(_secrets_dir=tmp_path)
    assert settings.webhook_token is not None
    assert settings.webhook_token.get_secret_value() == token
    assert settings.admin_token is None  # no faults: no admin routes


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"secretFiles": {"SERVESCOPE_ADMIN_TOKEN": {"key": "t"}}}, "faults.existingSecret"),
        ({"podSecurityContext": {"fsGroup": None}}, "fsGroup"),
    ],
)
def test_secret_files_need_their_own_path_and_the_pods_group(helm, values, says):
    with pytest.raises(helm.RenderError, match=says):
        helm.render_values({"components": {"responder": {"enabled": True, **values}}})


def _kps() -> stack_cli.Release:
    return next(r for r in stack_cli.load_stack(ROOT).releases if r.name == "kube-prometheus-stack")


def _cluster_alertmanager_config() -> dict[str, Any]:
    generated = stack_cli.generated_values(ROOT, _kps())
    assert generated is not None
    return dict(generated[1]["alertmanager"]["config"])


def _webhooks(config: dict[str, Any]) -> list[dict[str, Any]]:
    return [w for r in config.get("receivers", []) for w in r.get("webhook_configs", [])]


def _render_extra_manifests(tmp_path: Path, namespace: str) -> list[dict[str, Any]]:
    """kube-prometheus-stack's extraManifests the way its templates/extra-objects.yaml renders
    them (each entry through `tpl`), with Helm's engine and no cluster (lookup finds nothing)."""
    import helm_python

    chart = tmp_path / "extra"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: extra\nversion: 0.1.0\n")
    (chart / "templates" / "extra-objects.yaml").write_text(
        "{{- range .Values.extraManifests }}\n---\n{{ tpl . $ }}\n{{- end }}\n"
    )
    release = helm_python.Config(storage_driver="memory").install(
        str(chart), "kube-prometheus-stack", {"extraManifests": KPS_VALUES["extraManifests"]},
        dry_run="client", namespace=namespace,
    )  # fmt: skip
    return [d for d in yaml.safe_load_all(release["manifest"]) if d]


def test_alertmanager_sends_the_token_from_a_secret_in_its_own_namespace(helm, tmp_path):
    # Every webhook to the responder carries the bearer token, read from a file...
    config = _cluster_alertmanager_config()
    to_responder = [w for w in _webhooks(config) if f"//{RESPONDER}." in w["url"]]
    assert to_responder
    files = set()
    for webhook in to_responder:
        auth = webhook["http_config"]["authorization"]
        assert auth.get("type", "Bearer") == "Bearer" and "credentials" not in auth
        files.add(auth["credentials_file"])
    (path,) = files
    # ...where the operator mounts a Secret of alertmanagerSpec.secrets...
    prefix = "/etc/alertmanager/secrets/"
    assert path.startswith(prefix)
    secret_name, key = path.removeprefix(prefix).split("/")
    assert secret_name in KPS_VALUES["alertmanager"]["alertmanagerSpec"]["secrets"]
    # ...which the stack's release creates in Alertmanager's namespace, with that key.
    (secret,) = [
        o for o in _render_extra_manifests(tmp_path, STACK["namespace"]) if o["kind"] == "Secret"
    ]
    kubernetes_validate.validate(secret, helm.KUBE_VERSION, strict=True)
    assert secret["metadata"] == {
        "name": secret_name, "namespace": STACK["namespace"],
        "labels": {"app.kubernetes.io/part-of": "servescope"},
    }  # fmt: skip
    assert len(__import__("base64").b64decode(secret["data"][key])) >= 32
    # The two copies name each other: the app's seeds from this one, this one from the app's.
    seed = yaml.safe_load((helm.CHART / "values.yaml").read_text())["components"]["responder"]
    assert seed["secretFiles"][TOKEN_ENV]["seedFrom"] == {
        "namespace": STACK["namespace"], "name": secret_name, "key": key,
    }  # fmt: skip
    ref = _token_ref(helm, helm.render(values={"components": {"responder": {"enabled": True}}}))
    text = KPS_VALUES["extraManifests"][0]
    assert f'lookup "v1" "Secret" "{helm.NAMESPACE}" "{ref["name"]}"' in text
    assert f'"{ref["key"]}"' in text


def test_the_cluster_alertmanager_config_with_the_token_passes_amtool(tmp_path):
    amtool = pytest.importorskip("shutil").which("amtool")
    if amtool is None:
        pytest.skip("amtool is missing: apt-get install prometheus-alertmanager")
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(_cluster_alertmanager_config()))
    result = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    # amtool does read http_config: a token given twice is refused.
    broken = _cluster_alertmanager_config()
    _webhooks(broken)[0]["http_config"]["authorization"]["credentials"] = "x"
    path.write_text(yaml.safe_dump(broken))
    result = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True)
    assert result.returncode != 0


def test_a_webhook_prefix_that_matches_nothing_is_an_error():
    spec = {"path": "x.yml", "webhookHttpConfig": {"http://nowhere/": {"authorization": {}}}}
    config = {"receivers": [{"name": "a", "webhook_configs": [{"url": "http://r/alerts"}]}]}
    out, matched = stack_cli.add_webhook_http_config(config, spec["webhookHttpConfig"])
    assert matched == set() and "http_config" not in out["receivers"][0]["webhook_configs"][0]
    out, matched = stack_cli.add_webhook_http_config(
        config, {"http://r/": {"authorization": {"credentials_file": "/t"}}}
    )
    assert out["receivers"][0]["webhook_configs"][0]["http_config"] == {
        "authorization": {"credentials_file": "/t"}
    }
    assert "http_config" not in config["receivers"][0]["webhook_configs"][0]  # input untouched


def test_local_mode_sends_no_token_and_its_responder_asks_for_none():
    """`servescope up` runs Alertmanager with deploy/alertmanager/alertmanager.yml and a
    responder without SERVESCOPE_RESPONDER_WEBHOOK_TOKEN: the webhook stays open there."""
    for webhook in _webhooks(alertmanager_config(19095)):
        assert "http_config" not in webhook
    responder = ResponderProcess(19095, Path("/nonexistent"), "http://127.0.0.1:9")
    assert TOKEN_ENV not in (responder.env or {})


# -- end to end: a real Alertmanager with the cluster's webhook settings, a real responder ------


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and 'integration="webhook"' in line
    )


@pytest.mark.timeout(120)
def test_alertmanager_delivers_with_the_token_and_a_stranger_is_refused(tmp_path):
    if alertmanager_binary() is None:
        pytest.skip("Alertmanager is missing: apt-get install prometheus-alertmanager")
    token = "t0ken" * 8
    (tmp_path / "token").write_text(token)
    responder_port = free_port()
    responder = ResponderProcess(
        responder_port, tmp_path, "http://127.0.0.1:9", extra_env={TOKEN_ENV: token}
    )
    # The cluster's configuration, with the responder's address and the token file local.
    config = _cluster_alertmanager_config()
    for webhook in _webhooks(config):
        webhook["url"] = f"http://127.0.0.1:{responder_port}/alerts"
        if "http_config" in webhook:
            webhook["http_config"]["authorization"]["credentials_file"] = str(tmp_path / "token")
    config["templates"] = []
    for route in [config["route"], *config["route"].get("routes", [])]:
        route.update(group_wait="1s", group_interval="1s")
    alertmanager = AlertmanagerProcess(free_port(), tmp_path, config)
    responder.start(30)
    try:
        alertmanager.start(30)
        # No token, or a wrong one: refused before the body is read.
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            request = urllib.request.Request(
                responder.url + "/alerts", data=b"{}", headers=headers, method="POST"
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=5)
            assert refused.value.code == 401
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        alert = {"labels": {"alertname": "ServescopeP95LatencyHigh", "severity": "page",
                            "category": "latency", "service": "preprocess"},
                 "annotations": {"summary": "test"}, "startsAt": now}  # fmt: skip
        request = urllib.request.Request(
            alertmanager.url + "/api/v2/alerts", data=json.dumps([alert]).encode(),
            headers={"Content-Type": "application/json"}, method="POST",
        )  # fmt: skip
        urllib.request.urlopen(request, timeout=5).close()
        posted = time.monotonic()
        deadline = posted + 30
        while _metric(alertmanager.url, "alertmanager_notifications_total") < 1:
            assert time.monotonic() < deadline, "Alertmanager sent nothing in 30 s"
            time.sleep(0.2)
        assert _metric(alertmanager.url, "alertmanager_notifications_failed_total") == 0
        while not responder.incidents():
            assert time.monotonic() < deadline, "the responder wrote no note in 30 s"
            time.sleep(0.2)
        assert responder.incidents()[0]["alertname"] == "ServescopeP95LatencyHigh"
        print(f"delivered with the token and noted {time.monotonic() - posted:.1f} s after posting")
    finally:
        alertmanager.stop()
        responder.stop()
