"""`servescope stack install|status|uninstall`: the observability stack on Kubernetes."""

from __future__ import annotations

import argparse

from servescope.cli.kube_stack import (
    DEFAULT_TIMEOUT,
    _guarded,
    cmd_install,
    cmd_status,
    cmd_uninstall,
)
from servescope.cli.paths import repo_root


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    stack = subparsers.add_parser(
        "stack",
        help="install, inspect or remove the observability stack on Kubernetes (via helm)",
        description="The observability stack of deploy/stack/stack.yaml (kube-prometheus-stack, "
        "OpenTelemetry Collector, Jaeger, Loki, Fluent Bit), installed with helm into the "
        "current kube-context.",
    )
    actions = stack.add_subparsers(dest="stack_command", required=True)
    for name, func, text in (
        ("install", cmd_install, "install or upgrade every release (pinned chart versions)"),
        ("status", cmd_status, "list the releases and whether each is deployed"),
        ("uninstall", cmd_uninstall, "remove the releases, in reverse order"),
    ):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument(
            "--dry-run",
            action="store_true",
            help="print the exact helm (and kubectl) commands; run nothing",
        )
        action.add_argument("--kube-context", default=None, help="kube-context to use")
        action.add_argument("--helm", default="helm", help="the helm binary (default: helm)")
        action.add_argument(
            "--root", default=str(repo_root()), help=argparse.SUPPRESS
        )  # the checkout whose deploy/stack is used; tests point it at a copy
        if name != "status":
            action.add_argument("--only", nargs="+", metavar="RELEASE", help="only these releases")
        if name == "install":
            action.add_argument(
                "--timeout", default=DEFAULT_TIMEOUT, help="helm --timeout per release"
            )
        action.set_defaults(func=_guarded(func))
