"""deploy/stack and `servescope stack install|status|uninstall`: pinned charts, values that exist
and agree with the app chart, exact commands on --dry-run, clear errors without helm or a
cluster, and files owned by other issues read in place, never copied."""

from __future__ import annotations

import argparse
import copy
import os
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from servescope.cli import kube_stack as stack_cli
from servescope.cli.commands import stack as stack_command

ROOT = Path(__file__).resolve().parents[2]
STACK_DIR = ROOT / "deploy" / "stack"
MANIFEST = yaml.safe_load((STACK_DIR / "stack.yaml").read_text())


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="servescope")
    sub = parser.add_subparsers(dest="command", required=True)
    stack_command.register(sub)
    args = parser.parse_args(argv)
    code = args.func(args)
    return code, capsys.readouterr().out


def _copy_root(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(STACK_DIR, root / "deploy" / "stack")
    return root


def test_every_release_is_pinned_and_its_values_exist():
    assert MANIFEST["namespace"] == "monitoring"
    names = [r["name"] for r in MANIFEST["releases"]]
    assert names[0] == "kube-prometheus-stack", "its CRDs must exist before other ServiceMonitors"
    assert {"kube-prometheus-stack", "otel-collector", "jaeger", "loki", "fluent-bit"} == set(names)
    for release in MANIFEST["releases"]:
        assert re.fullmatch(r"\d+\.\d+\.\d+", str(release["version"])), release["name"]
        assert release["chart"].split("/")[0] in MANIFEST["repositories"]
        for values in release["values"] + [
            v["values"] for v in release.get("valuesWhenPresent", [])
        ]:
            assert isinstance(yaml.safe_load((STACK_DIR / values).read_text()), dict), values


def test_dry_run_prints_the_exact_commands(capsys):
    code, out = _run(["stack", "install", "--dry-run"], capsys)
    assert code == 0
    lines = [line for line in out.splitlines() if not line.startswith("#")]
    stack = stack_cli.load_stack(ROOT)
    expected = stack_cli.install_commands(stack, ROOT)
    assert lines == [shlex.join(c) for c in expected]
    for release in MANIFEST["releases"]:
        (line,) = [c for c in lines if f" upgrade --install {release['name']} " in c]
        assert f"{release['chart']} --version {release['version']} --namespace monitoring" in line
        for values in release["values"]:
            assert f"--values deploy/stack/{values}" in line
        assert "--wait" in line
    assert not [line for line in lines if " /" in line], "commands use repository-relative paths"


def test_uninstall_and_status_dry_runs(capsys):
    code, out = _run(["stack", "uninstall", "--dry-run", "--kube-context", "minikube"], capsys)
    assert code == 0
    releases = [line.split()[2] for line in out.splitlines() if line.startswith("helm uninstall")]
    assert releases == [r["name"] for r in reversed(MANIFEST["releases"])]
    assert all("--kube-context minikube" in line for line in out.splitlines()[1:])
    code, out = _run(["stack", "status", "--dry-run"], capsys)
    assert code == 0
    assert "helm list --namespace monitoring --all --output json" in out


def test_only_selects_releases_and_rejects_unknown_ones(capsys):
    code, out = _run(["stack", "install", "--dry-run", "--only", "jaeger"], capsys)
    assert code == 0
    assert [line for line in out.splitlines() if "upgrade --install" in line] == [
        line for line in out.splitlines() if "upgrade --install jaeger " in line
    ]
    assert "helm repo add jaegertracing" in out and "prometheus-community" not in out
    code, out = _run(["stack", "install", "--dry-run", "--only", "grafana"], capsys)
    assert code == 2
    assert "unknown release(s): grafana" in out


def test_files_owned_elsewhere_are_read_in_place(tmp_path, capsys):
    root = _copy_root(tmp_path)
    # The copy holds neither Alertmanager's routes nor a Lua filter: nothing extra is passed.
    plain = stack_cli.install_commands(stack_cli.load_stack(root), root)
    assert not [c for c in plain if "--set-file" in c or "generated" in " ".join(c)]
    # With those files (the responder's local-mode webhook is rewritten to
    # its in-cluster Service, any other webhook is left alone):
    routes = {
        "route": {"receiver": "webhook", "group_by": ["alertname"]},
        "receivers": [
            {"name": "webhook", "webhook_configs": [{"url": "http://receiver:8080/"}]},
            {"name": "page", "webhook_configs": [{"url": "http://127.0.0.1:9095/alerts"}]},
        ],
    }
    (root / "deploy" / "alertmanager").mkdir(parents=True)
    (root / "deploy" / "alertmanager" / "alertmanager.yml").write_text(yaml.safe_dump(routes))
    (root / "deploy" / "alertmanager" / "servescope.tmpl").write_text('{{ define "x" }}{{ end }}')
    (root / "deploy" / "fluent-bit").mkdir(parents=True)
    (root / "deploy" / "fluent-bit" / "sampling.lua").write_text(
        "function sample(tag, ts, record) return 0, ts, record end\n"
    )
    code, out = _run(["stack", "install", "--dry-run", "--root", str(root)], capsys)
    assert code == 0
    kps = next(
        line for line in out.splitlines() if "upgrade --install kube-prometheus-stack" in line
    )
    assert "--values .run/stack/kube-prometheus-stack-generated.yaml" in kps
    assert (
        "--set-file 'alertmanager.templateFiles.servescope\\.tmpl=deploy/alertmanager/servescope.tmpl'"
        in kps
    )
    generated = yaml.safe_load(
        (root / ".run" / "stack" / "kube-prometheus-stack-generated.yaml").read_text()
    )
    in_cluster = copy.deepcopy(routes)
    in_cluster["receivers"][1]["webhook_configs"][0]["url"] = (
        "http://servescope-responder.servescope.svc.cluster.local:9095/alerts"
    )
    (spec,) = next(
        r for r in stack_cli.load_stack(ROOT).releases if r.name == "kube-prometheus-stack"
    ).yaml_files
    # The webhook to the responder carries its bearer token; the other webhook is left alone.
    (http_config,) = spec["webhookHttpConfig"].values()
    in_cluster["receivers"][1]["webhook_configs"][0]["http_config"] = http_config
    assert generated == {"alertmanager": {"config": stack_cli.apply_overlay(in_cluster, spec)}}
    fluent = next(line for line in out.splitlines() if "upgrade --install fluent-bit" in line)
    assert "--values deploy/stack/fluent-bit-sampling.yaml" in fluent
    assert "--set-file 'luaScripts.sampling\\.lua=deploy/fluent-bit/sampling.lua'" in fluent
    # The [FILTER] the overlay adds calls the script where the chart mounts it.
    overlay = yaml.safe_load((STACK_DIR / "fluent-bit-sampling.yaml").read_text())
    assert "script  /fluent-bit/scripts/sampling.lua" in overlay["config"]["filters"]


def test_clear_error_without_helm_or_cluster(tmp_path, capsys, monkeypatch):
    """Real kubectl (when installed) against no cluster; no helm on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kubectl = shutil.which("kubectl")
    if kubectl:
        (bin_dir / "kubectl").symlink_to(kubectl)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    for action in ("install", "status", "uninstall"):
        code, out = _run(["stack", action], capsys)
        assert code == 2, out
        assert "`helm` is not on PATH" in out and "helm.sh/docs/intro/install" in out
        if kubectl:
            assert "no Kubernetes cluster is reachable" in out and "minikube start" in out
        assert "--dry-run" in out


def _resources(values: dict[str, Any], *path: str) -> dict[str, Any]:
    node: Any = values
    for key in path:
        node = node[key]
    return dict(node["resources"])


def _quantity(value: str) -> float:
    units = {"m": 1e-3, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if str(value).endswith(suffix):
            return float(str(value)[: -len(suffix)]) * factor
    return float(value)


def test_stack_and_app_fit_a_minikube_with_4_cpus_and_8_gb():
    def values(name: str) -> dict[str, Any]:
        return dict(yaml.safe_load((STACK_DIR / name).read_text()))

    kps = values("kube-prometheus-stack.yaml")
    blocks = [
        _resources(kps, "prometheusOperator"),
        _resources(kps, "prometheus", "prometheusSpec"),
        _resources(kps, "alertmanager", "alertmanagerSpec"),
        _resources(kps, "grafana"),
        _resources(kps, "kube-state-metrics"),
        _resources(kps, "prometheus-node-exporter"),
        _resources(values("opentelemetry-collector.yaml")),
        _resources(values("jaeger.yaml"), "jaeger"),
        _resources(values("loki.yaml"), "singleBinary"),
        _resources(values("fluent-bit.yaml")),
    ]
    app = yaml.safe_load((ROOT / "deploy/helm/servescope/values.yaml").read_text())
    # The services and the alert responder (a component, on in the advanced profile).
    blocks += [c["resources"] for c in app["components"].values()]
    assert "responder" in app["components"]
    cpu_requests = sum(_quantity(b["requests"]["cpu"]) for b in blocks)
    memory_requests = sum(_quantity(b["requests"]["memory"]) for b in blocks)
    memory_limits = sum(_quantity(b["limits"]["memory"]) for b in blocks)
    # Minikube's own control plane and add-ons take about 1 CPU and 1.5 GiB of the 4 and 8.
    assert cpu_requests <= 2.0, cpu_requests
    assert memory_requests <= 3 * 2**30, memory_requests / 2**20
    assert memory_limits <= 6.5 * 2**30, memory_limits / 2**20


def test_stack_addresses_agree_with_the_app_chart_and_grafana():
    services = {s["name"]: s for r in MANIFEST["releases"] for s in r.get("services", {}).values()}
    chart_values = yaml.safe_load((ROOT / "deploy/helm/servescope/values.yaml").read_text())
    endpoint = chart_values["tracing"]["endpoint"]
    host, port = re.match(r"http://([^.]+)\.([^.]+)\.svc[^:]*:(\d+)", endpoint).group(1, 3)
    assert host in services and services[host]["port"] == int(port)
    kps = yaml.safe_load((STACK_DIR / "kube-prometheus-stack.yaml").read_text())
    for source in kps["grafana"]["additionalDataSources"]:
        name, port = re.match(r"http://([^.]+)\.monitoring\.svc[^:]*:(\d+)", source["url"]).group(
            1, 2
        )
        assert services[name]["port"] == int(port), source["name"]
    collector = yaml.safe_load((STACK_DIR / "opentelemetry-collector.yaml").read_text())
    assert collector["fullnameOverride"] == host
    # The app's network policy lets pods reach the collector's pods by the chart's name label.
    peers = chart_values["networkPolicy"]["collector"]["peers"]
    assert (
        peers[0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
        == "opentelemetry-collector"
    )
    # Prometheus picks up the app's ServiceMonitor and rules from any namespace.
    spec = kps["prometheus"]["prometheusSpec"]
    assert spec["serviceMonitorSelectorNilUsesHelmValues"] is False
    assert spec["ruleSelectorNilUsesHelmValues"] is False
    assert "exemplar-storage" in spec["enableFeatures"]
    assert chart_values["monitoring"]["labels"]["release"] == MANIFEST["releases"][0]["name"]


def test_app_notes_forward_to_the_stack_services(helm):
    services = {
        s["name"]: s["port"] for r in MANIFEST["releases"] for s in r.get("services", {}).values()
    }
    notes = helm.render([helm.CHART / "ci" / "observability-values.yaml"]).notes
    forwards = [
        line.split() for line in notes.splitlines() if "--namespace monitoring port-forward" in line
    ]
    assert len(forwards) == 4
    for words in forwards:
        name = words[4].removeprefix("svc/")
        assert int(words[5].split(":")[1]) == services[name], name


def test_images_name_no_registry_host_and_paths_stay_inside(helm):
    """Images come from the charts' defaults or local builds (a registry is the user's choice,
    default.image.registry); no file names a path outside the repository."""
    files = [
        *STACK_DIR.glob("*.yaml"),
        *(ROOT / "deploy/helm").rglob("*.yaml"),
        ROOT / "skaffold.yaml",
    ]
    image = re.compile(
        r"^[ \t]*(?:repository|image|registry):[ \t]*['\"]?([^\s'\"#]+)", re.MULTILINE
    )
    checked = 0
    for path in files:
        text = path.read_text()
        for reference in image.findall(text):
            checked += 1
            first = reference.split("/")[0]
            assert "." not in first and ":" not in first, f"{path}: {reference} names a registry"
        assert os.fspath(ROOT) not in text and "/home/" not in text and "/tmp/" not in text, path
    assert checked >= 4  # the three component repositories and the collector's image
    for deployment in helm.render().of_kind("Deployment"):
        assert "/" not in helm.containers(deployment)[0]["image"]


def test_overlay_sets_prepends_and_appends_without_touching_the_source():
    source = {"route": {"receiver": "ticket", "routes": [{"receiver": "page"}]}, "receivers": []}
    spec = {
        "path": "x.yml",
        "set": {"route.receiver": "null", "global.resolve_timeout": "5m"},
        "prepend": {"route.routes": [{"receiver": "null"}]},
        "append": {"receivers": [{"name": "null"}], "inhibit_rules": [{"equal": ["a"]}]},
    }
    result = stack_cli.apply_overlay(source, spec)
    assert result == {
        "route": {"receiver": "null", "routes": [{"receiver": "null"}, {"receiver": "page"}]},
        "receivers": [{"name": "null"}],
        "global": {"resolve_timeout": "5m"},
        "inhibit_rules": [{"equal": ["a"]}],
    }
    assert source["route"]["receiver"] == "ticket"  # the parsed file is left as read
    assert stack_cli.apply_overlay(source, {"path": "x.yml"}) is source
    with pytest.raises(stack_cli.StackError, match="needs a list"):
        stack_cli.apply_overlay(source, {"path": "x.yml", "append": {"route": [{}]}})


def test_the_lua_sampling_filter_is_wired_with_the_app_charts_ratio(tmp_path, capsys):
    """The repository's filter (deploy/fluent-bit/sampling.lua) is installed: passed in place,
    one [FILTER] per sampled level calling a function the script defines, and its ratio read
    from the app chart's logSampling.infoRate, the services' ratio."""
    code, out = _run(["stack", "install", "--dry-run", "--root", str(ROOT)], capsys)
    assert code == 0
    fluent = next(line for line in out.splitlines() if "upgrade --install fluent-bit" in line)
    assert "--values deploy/stack/fluent-bit-sampling.yaml" in fluent
    assert "--set-file 'luaScripts.sampling\\.lua=deploy/fluent-bit/sampling.lua'" in fluent
    assert "--values .run/stack/fluent-bit-generated.yaml" in fluent
    generated = yaml.safe_load((ROOT / ".run" / "stack" / "fluent-bit-generated.yaml").read_text())
    app = yaml.safe_load((ROOT / "deploy" / "helm" / "servescope" / "values.yaml").read_text())
    assert generated == {
        "env": [
            {
                "name": "SERVESCOPE_LOG_INFO_SAMPLE_RATIO",
                "value": str(app["logSampling"]["infoRate"]),
            }
        ]
    }

    overlay = yaml.safe_load((STACK_DIR / "fluent-bit-sampling.yaml").read_text())
    filters = re.split(r"\n\s*\n", overlay["config"]["filters"].strip())
    lua = [dict(line.split(None, 1) for line in f.strip().splitlines()[1:]) for f in filters[1:]]
    script = (ROOT / "deploy" / "fluent-bit" / "sampling.lua").read_text()
    assert [f["Alias"] for f in lua] == ["log_sampling_debug", "log_sampling_info"]
    for f in lua:
        assert f["Name"] == "lua" and f["script"] == "/fluent-bit/scripts/sampling.lua"
        assert re.search(rf"^(function {f['call']}\(|{f['call']} = )", script, re.MULTILINE)
    # The kubernetes filter (fluent-bit.yaml's) still runs first: it lifts `level`, `trace_id`.
    base = yaml.safe_load((STACK_DIR / "fluent-bit.yaml").read_text())
    assert filters[0].strip() == base["config"]["filters"].strip()
    # Fluent Bit's counters (the drops by level) are scraped.
    assert overlay["serviceMonitor"]["enabled"] is True


def test_env_from_files_reads_one_declared_value(tmp_path):
    root = _copy_root(tmp_path)
    (fluent,) = [r for r in stack_cli.load_stack(root).releases if r.name == "fluent-bit"]
    assert stack_cli.generated_values(root, fluent) is None  # no app chart in the copy
    chart = root / "deploy" / "helm" / "servescope"
    chart.mkdir(parents=True)
    (chart / "values.yaml").write_text("logSampling:\n  infoRate: 0.25\n")
    generated = stack_cli.generated_values(root, fluent)
    assert generated is not None
    assert generated[1] == {"env": [{"name": "SERVESCOPE_LOG_INFO_SAMPLE_RATIO", "value": "0.25"}]}
    (chart / "values.yaml").write_text("logging:\n  level: info\n")
    with pytest.raises(stack_cli.StackError, match=r"has no 'logSampling\.infoRate'"):
        stack_cli.generated_values(root, fluent)
