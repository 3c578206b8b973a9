"""The Minikube path as the docs tell it: deploy/README-minikube.md, the "Run on Minikube"
section of README.md, skaffold.yaml's header and the stack command's hints. Every command
they give is one the project supports (the `servescope` subcommands and options exist in the
CLI's parser; the other tools are the ones the path needs), the cluster is started with the
flags the chart needs, and the profile and cost tables say what each profile renders."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from servescope.cli import kube_stack
from servescope.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "deploy" / "README-minikube.md"
README = (ROOT / "README.md").read_text()
SKAFFOLD_TEXT = (ROOT / "skaffold.yaml").read_text()
PROFILES = sorted((ROOT / "deploy" / "helm" / "profiles").glob("*.yaml"))
# Tools the Minikube path uses besides `servescope` (through `uv run`).
TOOLS = {"minikube", "kubectl", "helm", "skaffold", "curl", "uv", "docker"}
SHELL = {"for", "do", "done"}
REQUIRED_START_FLAGS = ("--cni calico", "--addons metrics-server")


def _section(text: str, heading: str) -> str:
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, heading
    return match.group(1)


MINIKUBE_SECTION = _section(README, "Run on Minikube")


def _command_lines(markdown: str) -> list[str]:
    """The commands of a page: lines of ```sh blocks (comments dropped) and inline code
    that starts with a tool or `servescope`."""
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", markdown, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    for code in re.findall(r"`([^`\n]+)`", markdown):
        words = code.split()
        if words and (words[0] in TOOLS | {"servescope"}) and len(words) > 1:
            lines.append(code)
    return lines


def _servescope_argv(line: str) -> list[str] | None:
    try:
        words = shlex.split(line)
    except ValueError:
        words = line.split()
    if words[:1] == ["servescope"]:
        return words[1:]
    if words[:3] == ["uv", "run", "servescope"]:
        return words[3:]
    return None


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings}


def check_servescope_command(argv: list[str]) -> str | None:
    """None when `servescope <argv>` names existing subcommands and options; else why not."""
    parser = build_parser()
    path = ["servescope"]
    words = list(argv)
    while words:
        subs = _subparsers(parser)
        word = words[0]
        if word in ("-h", "--help"):
            return None
        if word.startswith("-"):
            option = word.split("=", 1)[0]
            if option not in _options(parser):
                return f"`{' '.join(path)}` has no option {option}"
            words.pop(0)
            continue
        if subs:
            if word not in subs:
                return f"`{' '.join(path)}` has no subcommand {word!r} (has {sorted(subs)})"
            parser = subs[word]
            path.append(word)
            words.pop(0)
            continue
        words.pop(0)  # a positional argument
    if _subparsers(parser):
        return f"`{' '.join(path)}` needs a subcommand"
    return None


def test_the_subcommand_check_refuses_what_does_not_exist():
    assert check_servescope_command(["stack", "install", "--dry-run"]) is None
    assert check_servescope_command(["stack", "deploy"]) is not None
    assert check_servescope_command(["stack", "install", "--profile", "x"]) is not None
    assert check_servescope_command(["stack"]) is not None
    assert check_servescope_command(["stack", "--help"]) is None


DOCS = {
    "deploy/README-minikube.md": lambda: GUIDE.read_text(),
    "README.md#run-on-minikube": lambda: MINIKUBE_SECTION,
    "skaffold.yaml": lambda: (
        "```sh\n"
        + "\n".join(
            line.lstrip("# ")
            for line in SKAFFOLD_TEXT.split("apiVersion:")[0].splitlines()
            if line.startswith("#   ")
        )
        + "\n```"
    ),
}


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_every_command_is_one_the_project_supports(doc):
    lines = _command_lines(DOCS[doc]())
    assert lines, doc
    for line in lines:
        first = line.split()[0]
        if first == "eval" and "$(minikube docker-env)" in line:
            first = "minikube"  # point the shell's docker at Minikube's
        if first in SHELL:
            continue
        assert first in TOOLS or first == "servescope", f"{doc}: {line!r} uses {first}"
        if first == "uv":
            assert line.startswith("uv run servescope"), f"{doc}: {line!r}"
        argv = _servescope_argv(line)
        if argv is not None:
            problem = check_servescope_command(argv)
            assert problem is None, f"{doc}: {line!r}: {problem}"


def test_the_guide_exists_and_skaffold_points_at_it():
    assert GUIDE.is_file()
    header = SKAFFOLD_TEXT.split("apiVersion:")[0]
    assert "deploy/README-minikube.md" in header
    assert "deploy/README-minikube.md" in MINIKUBE_SECTION
    assert "deploy/README-minikube.md" in kube_stack.CLUSTER_HINT


def _start_lines(text: str) -> set[str]:
    return {re.sub(r"\s+", " ", m.strip()) for m in re.findall(r"(minikube start[^\n`#]*)", text)}


def test_minikube_starts_with_the_network_plugin_and_metrics_server_everywhere():
    """Without Calico the NetworkPolicies are not enforced; without metrics-server the HPAs
    show <unknown>. Every place that starts the cluster starts it the same way."""
    sources = {
        "skaffold.yaml": _start_lines(SKAFFOLD_TEXT),
        "README.md": _start_lines(MINIKUBE_SECTION),
        "deploy/README-minikube.md": _start_lines(GUIDE.read_text().split("## 6.")[0]),
        "kube_stack.CLUSTER_HINT": _start_lines(kube_stack.CLUSTER_HINT),
    }
    for name, lines in sources.items():
        assert lines == {kube_stack.MINIKUBE_START}, f"{name}: {lines}"
    for flag in REQUIRED_START_FLAGS:
        assert flag in kube_stack.MINIKUBE_START


def test_the_stack_goes_before_the_first_deploy_in_every_walkthrough():
    for name, text in (
        ("skaffold.yaml", SKAFFOLD_TEXT),
        ("README.md", MINIKUBE_SECTION),
        ("deploy/README-minikube.md", GUIDE.read_text()),
    ):
        deploy = re.search(r"^[#\s]*skaffold dev(?! on)", text, re.M)
        assert deploy, name
        assert text.index("servescope stack install") < deploy.start(), name


def _profile_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def _row(table_text: str, key: str) -> str:
    for line in table_text.splitlines():
        if line.startswith(f"| `{key}`"):
            return line
    raise AssertionError(f"no table row for `{key}`")


@pytest.mark.parametrize("profile", PROFILES, ids=[p.stem for p in PROFILES])
def test_the_profile_table_says_what_each_profile_turns_on(profile, helm):
    rendered = helm.render([profile])
    kinds = {o["kind"] for o in rendered.objects}
    responder = any(helm.component_of(d) == "responder" for d in rendered.of_kind("Deployment"))
    tracing = any(
        "OTEL_EXPORTER_OTLP_ENDPOINT" in helm.env_of(helm.containers(d)[0])
        for d in rendered.of_kind("Deployment")
    )
    # What a profile turns on, cumulatively: its row and the rows above it.
    table = MINIKUBE_SECTION.split("### Lab profiles")[1].split("###")[0]
    order = ["beginner", "intermediate", "advanced"]
    rows = " ".join(_row(table, p) for p in order[: order.index(profile.stem) + 1])
    assert ("responder" in rows) == responder, profile.stem
    assert ("rules" in rows) == ("PrometheusRule" in kinds), profile.stem
    assert ("traces" in rows) == tracing, profile.stem
    assert ("ServiceMonitor" in rows) == ("ServiceMonitor" in kinds), profile.stem
    # The guide's table has a row for it too.
    assert f"| `{profile.stem}` |" in GUIDE.read_text(), profile.stem


def _quantity(text: str) -> float:
    units = {"m": 1e-3, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in sorted(units.items(), key=lambda item: -len(item[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def _requests(rendered) -> tuple[float, float]:
    replicas = {
        h["spec"]["scaleTargetRef"]["name"]: h["spec"]["minReplicas"]
        for h in rendered.of_kind("HorizontalPodAutoscaler")
    }
    cpu = memory = 0.0
    for d in rendered.of_kind("Deployment"):
        n = replicas.get(d["metadata"]["name"], d["spec"].get("replicas", 1))
        requests = d["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
        cpu += n * _quantity(str(requests["cpu"]))
        memory += n * _quantity(str(requests["memory"]))
    return cpu, memory


@pytest.mark.parametrize("profile", [None, *PROFILES], ids=["none", *(p.stem for p in PROFILES)])
def test_the_cost_table_states_what_each_profile_requests(profile, helm):
    rendered = helm.render([profile] if profile else [])
    cpu, memory = _requests(rendered)
    costs = MINIKUBE_SECTION.split("### What it costs")[1].split("###")[0]
    key = "no profile" if profile is None else f"`{profile.stem}`"
    (row,) = [
        line for line in costs.splitlines() if line.startswith("| Servescope") and key in line
    ]
    m = re.search(r"\| (\d+)m CPU, (\d+) MiB \|", row)
    assert m, row
    assert (int(m.group(1)), int(m.group(2))) == (round(cpu * 1000), round(memory / 2**20)), row
