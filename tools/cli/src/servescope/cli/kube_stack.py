"""`servescope stack install|status|uninstall`: the observability stack, through `helm`.

The releases, their pinned chart versions and values files are declared in
deploy/stack/stack.yaml; this module turns that file into helm command lines (after one
`kubectl apply` of the namespace's manifest, whose Pod Security labels `--create-namespace`
would not set) and runs them with subprocess from the repository root. `--dry-run` prints the
exact commands instead.

Files that other issues own are read where they live, never copied: Alertmanager's routes
(deploy/alertmanager/alertmanager.yml) become `alertmanager.config` in a values file generated
under .run/stack/, its templates and the Fluent Bit Lua filter (the `setFiles` globs of
deploy/stack/stack.yaml: deploy/fluent-bit/sampling.lua) are passed with `--set-file`, and a
value another file declares becomes a chart's environment variable (`envFromFiles`: the app
chart's logSampling.infoRate is the Lua filter's ratio). Whatever does not exist is simply
left out. A YAML file's
`replaceUrlPrefixes` turns local-mode addresses into in-cluster ones on the way (the
responder's webhook URL: 127.0.0.1:9095 locally, the app chart's responder Service here), its
`webhookHttpConfig` gives the webhooks to such an address their `http_config` (the responder's
bearer token, read from the file its mounted Secret puts in Alertmanager's pod; local mode
sends none), and its `set` / `prepend` / `append` put back what the target chart's own default
would have had (kube-prometheus-stack's `null` route for Watchdog and InfoInhibitor, its
inhibitions).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

STACK_FILE = Path("deploy/stack/stack.yaml")
GENERATED_DIR = Path(".run/stack")
DEFAULT_TIMEOUT = "15m"
INSTALL_HINT = "install Helm 3.14 or newer (https://helm.sh/docs/intro/install/)"
KUBECTL_HINT = "install kubectl (https://kubernetes.io/docs/tasks/tools/)"
MINIKUBE_START = "minikube start --cpus 4 --memory 8g --cni calico --addons metrics-server"
CLUSTER_HINT = (
    f"start one with `{MINIKUBE_START}` (deploy/README-minikube.md) "
    "or choose a context with --kube-context"
)


class StackError(RuntimeError):
    """The stack cannot be installed, inspected or removed; the message says what to do."""


@dataclass(frozen=True)
class Release:
    name: str
    chart: str
    version: str
    values: tuple[str, ...]
    yaml_files: tuple[dict[str, Any], ...] = ()
    set_files: tuple[dict[str, str], ...] = ()
    values_when_present: tuple[dict[str, str], ...] = ()
    env_from_files: tuple[dict[str, str], ...] = ()
    services: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def repository(self) -> str:
        return self.chart.split("/", 1)[0]


@dataclass(frozen=True)
class Stack:
    namespace: str
    repositories: dict[str, str]
    releases: tuple[Release, ...]
    # The namespace's manifest (its Pod Security labels), applied with kubectl before the
    # releases: `helm --create-namespace` makes a namespace without labels.
    namespace_manifest: str | None = None


def load_stack(root: Path) -> Stack:
    """Read deploy/stack/stack.yaml under `root`."""
    path = root / STACK_FILE
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise StackError(f"cannot read {STACK_FILE}: {exc.strerror}") from exc
    releases = tuple(
        Release(
            name=r["name"],
            chart=r["chart"],
            version=str(r["version"]),
            values=tuple(r.get("values", [])),
            yaml_files=tuple(r.get("yamlFiles", [])),
            set_files=tuple(r.get("setFiles", [])),
            values_when_present=tuple(r.get("valuesWhenPresent", [])),
            env_from_files=tuple(r.get("envFromFiles", [])),
            services=dict(r.get("services", {})),
        )
        for r in raw["releases"]
    )
    stack = Stack(
        raw["namespace"], dict(raw["repositories"]), releases, raw.get("namespaceManifest")
    )
    for release in releases:
        if release.repository not in stack.repositories:
            raise StackError(
                f"{STACK_FILE}: release {release.name} uses repository "
                f"{release.repository!r}, which is not under `repositories`"
            )
    return stack


def select(stack: Stack, only: Sequence[str] | None) -> tuple[Release, ...]:
    if not only:
        return stack.releases
    known = {r.name for r in stack.releases}
    unknown = sorted(set(only) - known)
    if unknown:
        raise StackError(
            f"unknown release(s): {', '.join(unknown)}; the stack has {', '.join(sorted(known))}"
        )
    return tuple(r for r in stack.releases if r.name in only)


def _set_nested(target: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value


def replace_url_prefixes(value: Any, prefixes: Mapping[str, str]) -> tuple[Any, set[str]]:
    """`value` (parsed YAML) with every string that starts with one of `prefixes`' keys starting
    with that key's value instead, and the set of keys that matched at least once."""
    matched: set[str] = set()

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: walk(item) for key, item in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        if isinstance(node, str):
            for old, new in prefixes.items():
                if node.startswith(old):
                    matched.add(old)
                    return new + node[len(old) :]
        return node

    return walk(value), matched


def add_webhook_http_config(
    config: Any, http_configs: Mapping[str, Mapping[str, Any]]
) -> tuple[Any, set[str]]:
    """An Alertmanager `config` (parsed YAML) in which every webhook whose url starts with one
    of `http_configs`' keys has that key's `http_config` merged over its own, and the set of
    keys that matched at least once. The input is left alone."""
    if not http_configs:
        return config, set()
    result = json.loads(json.dumps(config))
    matched: set[str] = set()
    receivers = result.get("receivers") if isinstance(result, dict) else None
    for receiver in receivers or []:
        for webhook in receiver.get("webhook_configs") or []:
            url = str(webhook.get("url", ""))
            for prefix, http_config in http_configs.items():
                if url.startswith(prefix):
                    matched.add(prefix)
                    webhook["http_config"] = {**(webhook.get("http_config") or {}), **http_config}
    return result, matched


def _parent(target: dict[str, Any], dotted: str) -> tuple[dict[str, Any], str]:
    keys = dotted.split(".")
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    return target, keys[-1]


def apply_overlay(content: Any, spec: Mapping[str, Any]) -> Any:
    """`content` (a parsed YAML mapping) with a spec's `set` ({dotted key: value}, replaced),
    `prepend` and `append` ({dotted key: list}, the list extended before or after what the
    file has) applied, in that order. Used to put kube-prometheus-stack's own Alertmanager
    routes back beside deploy/alertmanager/alertmanager.yml's."""
    if not any(spec.get(k) for k in ("set", "prepend", "append")):
        return content
    if not isinstance(content, dict):
        raise StackError(f"{spec['path']}: set/prepend/append need a YAML mapping")
    result = json.loads(json.dumps(content))
    for dotted, value in (spec.get("set") or {}).items():
        parent, key = _parent(result, dotted)
        parent[key] = value
    for where in ("prepend", "append"):
        for dotted, items in (spec.get(where) or {}).items():
            parent, key = _parent(result, dotted)
            current = parent.get(key) or []
            if not isinstance(current, list) or not isinstance(items, list):
                raise StackError(f"{spec['path']}: {where} {dotted!r} needs a list on both sides")
            parent[key] = [*items, *current] if where == "prepend" else [*current, *items]
    return result


def value_from_file(root: Path, spec: Mapping[str, str]) -> str | None:
    """The value at dotted `key` of the YAML file `path` (an `envFromFiles` entry), as a
    string, or None when the file does not exist; a missing key is an error, so a renamed
    value cannot silently leave a chart on its own default."""
    source = root / spec["path"]
    if not source.is_file():
        return None
    node: Any = yaml.safe_load(source.read_text())
    for part in spec["key"].split("."):
        if not isinstance(node, dict) or part not in node:
            raise StackError(
                f"{spec['path']} has no {spec['key']!r}, which {STACK_FILE} (envFromFiles) "
                f"reads for {spec['name']}; update one of the two"
            )
        node = node[part]
    if isinstance(node, dict | list) or node is None:
        raise StackError(f"{spec['path']}: {spec['key']!r} is not a single value")
    return str(node).lower() if isinstance(node, bool) else str(node)


def generated_values(root: Path, release: Release) -> tuple[Path, dict[str, Any]] | None:
    """The values built from YAML files owned elsewhere (e.g. Alertmanager routes, the
    environment from `envFromFiles`), or None when none of them exists. The path is relative
    to `root`.

    A spec's `replaceUrlPrefixes` ({old: new}) rewrites the strings starting with `old`; a
    prefix that matches nothing is an error, so a changed source file cannot silently leave a
    local-mode address in the cluster's configuration. Its `webhookHttpConfig` ({prefix:
    http_config}, applied after the rewrite) adds an `http_config` to the webhooks whose url
    starts with `prefix`; a prefix no webhook has is an error too, so a moved receiver cannot
    silently lose its credentials."""
    values: dict[str, Any] = {}
    for spec in release.yaml_files:
        source = root / spec["path"]
        if source.is_file():
            try:
                content = yaml.safe_load(source.read_text())
            except yaml.YAMLError as exc:
                raise StackError(f"{spec['path']} is not valid YAML: {exc}") from exc
            prefixes: dict[str, str] = dict(spec.get("replaceUrlPrefixes") or {})
            content, matched = replace_url_prefixes(content, prefixes)
            unused = sorted(set(prefixes) - matched)
            if unused:
                raise StackError(
                    f"{spec['path']}: nothing in it starts with {unused[0]!r}, so the "
                    f"replacement {unused[0]!r} -> {prefixes[unused[0]]!r} ({STACK_FILE}, "
                    "replaceUrlPrefixes) would do nothing; update one of the two"
                )
            http_configs: dict[str, Any] = dict(spec.get("webhookHttpConfig") or {})
            content, matched = add_webhook_http_config(content, http_configs)
            unused = sorted(set(http_configs) - matched)
            if unused:
                raise StackError(
                    f"{spec['path']}: no webhook's url starts with {unused[0]!r}, so its "
                    f"http_config ({STACK_FILE}, webhookHttpConfig) would go nowhere; update "
                    "one of the two"
                )
            content = apply_overlay(content, spec)
            _set_nested(values, spec["key"], content)
    env = [
        {"name": spec["name"], "value": value}
        for spec in release.env_from_files
        if (value := value_from_file(root, spec)) is not None
    ]
    if env:
        values["env"] = env
    if not values:
        return None
    return GENERATED_DIR / f"{release.name}-generated.yaml", values


def install_commands(
    stack: Stack,
    root: Path,
    *,
    only: Sequence[str] | None = None,
    kube_context: str | None = None,
    timeout: str = DEFAULT_TIMEOUT,
    helm: str = "helm",
    write_generated: bool = True,
) -> list[list[str]]:
    """The helm command lines that install (or upgrade) the stack, in order.

    Paths are relative to `root`, where the commands run. Generated values files are written
    under .run/stack/ when `write_generated` is true (so a dry run's commands work verbatim).
    """
    releases = select(stack, only)
    context = ["--kube-context", kube_context] if kube_context else []
    commands: list[list[str]] = []
    if stack.namespace_manifest:
        manifest = (STACK_FILE.parent / stack.namespace_manifest).as_posix()
        kube = ["--context", kube_context] if kube_context else []
        commands.append(["kubectl", *kube, "apply", "-f", manifest])
    repositories = sorted({r.repository for r in releases})
    for repository in repositories:
        commands.append(
            [helm, "repo", "add", repository, stack.repositories[repository], "--force-update"]
        )
    commands.append([helm, "repo", "update", *repositories])
    for release in releases:
        command = [
            helm, "upgrade", "--install", release.name, release.chart,
            "--version", release.version,
            "--namespace", stack.namespace, "--create-namespace",
        ]  # fmt: skip
        for values_file in release.values:
            command += ["--values", (STACK_FILE.parent / values_file).as_posix()]
        for spec in release.values_when_present:
            if (root / spec["path"]).is_file():
                command += ["--values", (STACK_FILE.parent / spec["values"]).as_posix()]
        generated = generated_values(root, release)
        if generated is not None:
            path, values = generated
            if write_generated:
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                (root / path).write_text(
                    "# Generated by `servescope stack install`; do not edit.\n"
                    + yaml.safe_dump(values, sort_keys=False)
                )
            command += ["--values", path.as_posix()]
        for spec in release.set_files:
            for source in sorted(root.glob(spec["glob"])):
                key = source.name.replace(".", "\\.")
                command += ["--set-file", f"{spec['key']}.{key}={source.relative_to(root)}"]
        command += ["--wait", "--timeout", timeout, *context]
        commands.append(command)
    return commands


def uninstall_commands(
    stack: Stack,
    *,
    only: Sequence[str] | None = None,
    kube_context: str | None = None,
    helm: str = "helm",
) -> list[list[str]]:
    context = ["--kube-context", kube_context] if kube_context else []
    return [
        [helm, "uninstall", r.name, "--namespace", stack.namespace, "--ignore-not-found", *context]
        for r in reversed(select(stack, only))
    ]


def status_command(
    stack: Stack, *, kube_context: str | None = None, helm: str = "helm"
) -> list[str]:
    context = ["--kube-context", kube_context] if kube_context else []
    return [helm, "list", "--namespace", stack.namespace, "--all", "--output", "json", *context]


def preflight(
    helm: str,
    kube_context: str | None,
    env: dict[str, str] | None = None,
    *,
    need_kubectl: bool = False,
) -> None:
    """Fail with one message naming everything missing: the helm binary, kubectl when the
    commands use it, a reachable cluster."""
    problems: list[str] = []
    helm_path = shutil.which(helm, path=(env or os.environ).get("PATH"))
    if helm_path is None:
        problems.append(f"`{helm}` is not on PATH: {INSTALL_HINT}")
    kubectl = shutil.which("kubectl", path=(env or os.environ).get("PATH"))
    if kubectl is None and need_kubectl:
        problems.append(f"`kubectl` is not on PATH: {KUBECTL_HINT}")
    context = ["--context", kube_context] if kube_context else []
    if kubectl is not None:
        probe = [kubectl, *context, "get", "--raw", "/readyz", "--request-timeout", "5s"]
    elif helm_path is not None:
        probe = [
            helm_path,
            "list",
            "--short",
            *(["--kube-context", kube_context] if kube_context else []),
        ]
    else:
        probe = []
    if probe:
        try:
            result = subprocess.run(
                probe, capture_output=True, text=True, timeout=20, env=env, check=False
            )
            reachable = result.returncode == 0
            detail = (result.stderr or result.stdout).strip().splitlines()
        except subprocess.TimeoutExpired:
            reachable, detail = False, ["no answer in 20 s"]
        if not reachable:
            why = detail[-1] if detail else "no detail"
            problems.append(f"no Kubernetes cluster is reachable ({why}): {CLUSTER_HINT}")
    if problems:
        raise StackError(
            "the stack needs helm and a cluster:\n  - "
            + "\n  - ".join(problems)
            + "\n(`servescope stack install --dry-run` prints the commands without running them)"
        )


def _print_commands(commands: list[list[str]], root: Path) -> None:
    print(f"# run from {root}", flush=True)
    for command in commands:
        print(shlex.join(command), flush=True)


def _run(commands: list[list[str]], root: Path) -> int:
    for command in commands:
        print(f"$ {shlex.join(command)}", flush=True)
        code = subprocess.run(command, cwd=root, check=False).returncode
        if code != 0:
            print(f"error: the command above exited with {code}; nothing after it ran", flush=True)
            return code
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    root = Path(args.root)
    stack = load_stack(root)
    commands = install_commands(
        stack, root, only=args.only, kube_context=args.kube_context, timeout=args.timeout,
        helm=args.helm,
    )  # fmt: skip
    if args.dry_run:
        _print_commands(commands, root)
        return 0
    preflight(args.helm, args.kube_context, need_kubectl=any(c[0] == "kubectl" for c in commands))
    code = _run(commands, root)
    if code == 0:
        print(
            f"stack installed in namespace {stack.namespace}; "
            "`servescope stack status` lists the releases. Deploy the app now, or again if it "
            "was deployed before the stack (its ServiceMonitor and rules need the stack's "
            "CRDs): `skaffold dev -p beginner` (deploy/README-minikube.md)",
            flush=True,
        )
    return code


def cmd_uninstall(args: argparse.Namespace) -> int:
    root = Path(args.root)
    stack = load_stack(root)
    commands = uninstall_commands(
        stack, only=args.only, kube_context=args.kube_context, helm=args.helm
    )
    if args.dry_run:
        _print_commands(commands, root)
        return 0
    preflight(args.helm, args.kube_context)
    code = _run(commands, root)
    if code == 0:
        print(
            "note: helm keeps the Prometheus Operator's CRDs; remove them with "
            "`kubectl delete crd -l app.kubernetes.io/part-of=kube-prometheus-stack` "
            "(or by name: kubectl get crd | grep monitoring.coreos.com)",
            flush=True,
        )
    return code


def cmd_status(args: argparse.Namespace) -> int:
    root = Path(args.root)
    stack = load_stack(root)
    command = status_command(stack, kube_context=args.kube_context, helm=args.helm)
    if args.dry_run:
        _print_commands([command], root)
        return 0
    preflight(args.helm, args.kube_context)
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StackError(f"`{shlex.join(command)}` failed: {result.stderr.strip()}")
    deployed = {r["name"]: r for r in json.loads(result.stdout or "[]")}
    missing = 0
    print(f"{'release':24} {'pinned':10} {'deployed':32} status", flush=True)
    for release in stack.releases:
        found = deployed.get(release.name)
        if found is None:
            missing += 1
            print(f"{release.name:24} {release.version:10} {'-':32} not installed", flush=True)
            continue
        ok = found.get("status") == "deployed"
        missing += 0 if ok else 1
        print(
            f"{release.name:24} {release.version:10} {found.get('chart', '?'):32} "
            f"{found.get('status', '?')}",
            flush=True,
        )
    return 1 if missing else 0


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except StackError as exc:
            print(f"error: {exc}", flush=True)
            return 2

    return run
