"""The "recipe" configuration of `servescope bench`: what a user would copy instead.

The same three services with Servescope's telemetry off (as in bare), observed instead the
way the libraries' READMEs show: prometheus-fastapi-instrumentator for metrics,
`opentelemetry-instrument` with the FastAPI and aiohttp-client instrumentations for traces
(parent-based, at default's ratio, OTLP/HTTP to the bench's sink), structlog writing a JSON
access line for every request. The apps are built in `recipe_app.py`.

Like the peers (peers.py), the recipe lives in its own virtual environment, cached under the
user's cache directory by everything that shapes it and never inside the repository: the
workspace does not depend on its packages. That environment gets the five service packages
installed editable from this checkout (so it always runs the code the other configurations
run), the workspace's pins for every third-party package they share, and the recipe's own
packages at exact versions. One that cannot be installed or started is skipped with a
message.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from servescope.cli.bench.peers import VENV_COMMAND, cache_root
from servescope.cli.local.services import SERVICES, LocalStack, ServiceProcess
from servescope.cli.paths import repo_root
from servescope.telemetry.settings import TelemetrySettings

NAME = "recipe"

# Installed from this checkout, in dependency order.
SERVICE_PACKAGES = (
    "services/telemetry",
    "services/runtime",
    "services/preprocess",
    "services/classifier",
    "services/postprocess",
)

# The recipe's own packages, exact. OpenTelemetry's instrumentations are released as one
# train with the SDK: opentelemetry-instrumentation-aiohttp-client's newest release is 0.66b1,
# which needs the 1.45.1 / 0.66b1 train, while the workspace pins 1.45.2 / 0.66b2. So the
# recipe takes the whole train at 1.45.1 / 0.66b1 (the workspace's opentelemetry-* pins are
# left out of its constraints); every other shared package (fastapi, starlette, uvicorn,
# structlog, orjson, prometheus-client...) keeps the workspace's pin.
PACKAGES = (
    "prometheus-fastapi-instrumentator==8.1.0",
    "opentelemetry-distro==0.66b1",
    "opentelemetry-instrumentation-fastapi==0.66b1",
    "opentelemetry-instrumentation-aiohttp-client==0.66b1",
    "opentelemetry-exporter-otlp-proto-http==1.45.1",
    "opentelemetry-sdk==1.45.1",
    "opentelemetry-api==1.45.1",
)
# Reported with the figures.
VERSIONS_OF = (
    "prometheus-fastapi-instrumentator",
    "opentelemetry-instrumentation-fastapi",
    "opentelemetry-instrumentation-aiohttp-client",
    "opentelemetry-sdk",
    "structlog",
)


def environment() -> dict[str, str]:
    """What the recipe's services run with, on top of the bench's common variables (the OTLP
    endpoint of the sink, http/protobuf)."""
    ratio = TelemetrySettings.model_fields["trace_sample_ratio"].default
    return {
        "SERVESCOPE_TELEMETRY_ENABLED": "false",  # as bare: Servescope's own telemetry off
        # Head sampling as default's: parent-based, the same ratio.
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": str(ratio),
        "OTEL_TRACES_EXPORTER": "otlp",
        # opentelemetry-distro also exports metrics and logs over OTLP by default. The recipe's
        # metrics are Prometheus's (the instrumentator) and its logs structlog's on stdout, so
        # a user would turn those two exporters off rather than ship everything twice.
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
    }


def constraints() -> list[str]:
    """The workspace's third-party pins (root pyproject), less the OpenTelemetry train."""
    pyproject = tomllib.loads((repo_root() / "pyproject.toml").read_text())
    pins: list[str] = pyproject["tool"]["uv"]["constraint-dependencies"]
    return [pin for pin in pins if not pin.startswith("opentelemetry-")]


def _key(root: Path, pins: list[str]) -> str:
    """Everything the environment is made from: a change to any of it makes a new one."""
    parts = [sys.version.split()[0], str(root), *PACKAGES, *pins]
    parts += [(root / p / "pyproject.toml").read_text() for p in SERVICE_PACKAGES]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


@dataclass
class RecipeInstall:
    venv: Path | None = None
    versions: dict[str, str] = field(default_factory=dict)
    skipped: str = ""  # why, when the recipe cannot be measured


def install_recipe(
    cache: Path | None = None, pip_command: list[str] | None = None, timeout: float = 900.0
) -> RecipeInstall:
    """The recipe's venv (cached), or a RecipeInstall saying why it was skipped.

    `pip_command` replaces the installer (tests use it to simulate a failure).
    """
    cache = cache or cache_root()
    root = repo_root()
    pins = constraints()
    venv = cache / f"{NAME}-{_key(root, pins)}"
    marker = venv / "servescope-installed.json"
    if marker.exists():
        return RecipeInstall(venv, json.loads(marker.read_text()).get("versions", {}))
    log = cache / f"{venv.name}.install.log"
    try:
        shutil.rmtree(venv, ignore_errors=True)
        cache.mkdir(parents=True, exist_ok=True)
        pins_file = cache / f"{venv.name}.constraints.txt"
        pins_file.write_text("\n".join(pins) + "\n")
        with log.open("w") as out:
            uv = os.environ.get("UV") or shutil.which("uv")
            # The services' interpreter, so the recipe runs on the Python the others run on.
            create = (
                [uv, "venv", "--quiet", "--no-config", "--python", sys.executable]
                if uv
                else [sys.executable, *VENV_COMMAND[1:]]
            )
            subprocess.run(
                [*create, str(venv)],
                check=True,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
            python = str(venv / "bin" / "python")
            # No --compile-bytecode: it triples the install (20 s against 6 s here) to save the
            # services a few seconds at start, which the bench does not measure.
            installer = (
                [uv, "pip", "install", "--quiet", "--no-config", "--python", python] if uv else None
            )
            command = pip_command or installer or [python, "-m", "pip", "install", "--quiet"]
            editables = [arg for p in SERVICE_PACKAGES for arg in ("-e", str(root / p))]
            subprocess.run(
                [*command, "-c", str(pins_file), *editables, *PACKAGES],
                check=True,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
            versions = json.loads(
                subprocess.run(
                    [
                        python,
                        "-c",
                        "import importlib.metadata as m, json, sys; "
                        "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))",
                        *VERSIONS_OF,
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                    timeout=60,
                ).stdout
            )
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        shutil.rmtree(venv, ignore_errors=True)
        # The doc gets a short reason (no paths, no index hosts); the console gets the details.
        if isinstance(exc, subprocess.CalledProcessError):
            reason = f"exit code {exc.returncode}"
        elif isinstance(exc, subprocess.TimeoutExpired):
            reason = f"timed out after {timeout:.0f} s"
        else:
            reason = type(exc).__name__
        tail = ""
        with contextlib.suppress(OSError):
            tail = "\n".join(log.read_text(errors="replace").strip().splitlines()[-5:])
        print(f"bench: {NAME} install failed ({exc}); log {log}:\n{tail}", flush=True)
        return RecipeInstall(
            skipped=f"{NAME} skipped: install of the services with {' '.join(PACKAGES)} "
            f"failed ({reason})"
        )
    marker.write_text(json.dumps({"packages": PACKAGES, "versions": versions}))
    return RecipeInstall(venv, versions)


# uvicorn loads recipe_app.py from here (--app-dir), inside the recipe's venv.
APP_DIR = Path(__file__).resolve().parent


class RecipeService(ServiceProcess):
    """One service under `opentelemetry-instrument`, served by uvicorn from recipe_app."""

    def __init__(self, name: str, port: int, run_dir: Path, env: dict[str, str], venv: Path):
        super().__init__(name, port, run_dir, env)
        self.venv = venv

    def command(self) -> list[str]:
        bin_dir = self.venv / "bin"
        return [
            str(bin_dir / "opentelemetry-instrument"),
            str(bin_dir / "python"),
            "-m",
            "uvicorn",
            "--app-dir",
            str(APP_DIR),
            "--factory",
            f"recipe_app:{self.name}",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            # The structlog middleware writes the access line; uvicorn's would be a second.
            "--no-access-log",
        ]


def recipe_stack(
    venv: Path, ports: dict[str, int], run_dir: Path, common: dict[str, str]
) -> LocalStack:
    """The three services, wired to each other as a LocalStack wires them, under the recipe."""
    stack = LocalStack(ports=ports, run_dir=run_dir, env={"*": {**common, **environment()}})
    for name in SERVICES:
        service = stack.services[name]
        env = {
            k: v
            for k, v in (service.env or {}).items()
            if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
        }
        env["OTEL_SERVICE_NAME"] = name
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        stack.services[name] = RecipeService(name, service.port, run_dir, env, venv)
    return stack


# The configuration's description in docs/benchmarks.md (markdown lines).
DESCRIPTION = [
    "**recipe** is what a user would copy instead of Servescope's telemetry: the same services",
    "with it off (as in bare), plus prometheus-fastapi-instrumentator",
    "(`Instrumentator().instrument(app).expose(app)`, its defaults; Servescope's own `/metrics`",
    "route, mounted even with its telemetry off, makes way for it), `opentelemetry-instrument`",
    "with the FastAPI and aiohttp-client instrumentations (parent-based traces at default's",
    "10%, OTLP/HTTP to the same sink; the ASGI layer's receive and send spans kept, as its",
    "defaults have them; the distro's OTLP metrics and logs exporters off, since metrics are",
    "the instrumentator's and logs structlog's) and structlog's documented production setup",
    "(orjson, bytes to stdout, as the services' logs) writing a JSON access line with trace ids",
    'for every request. That line comes from FastAPI\'s documented `@app.middleware("http")`,',
    "the shape FastAPI-with-structlog guides copy; it is Starlette's `BaseHTTPMiddleware`, a",
    "large share of the recipe's cost (a pure-ASGI access-log middleware would cost less).",
    "uvicorn's access log is off, so there is one line per request. FastAPI's built-in",
    "OpenTelemetry layer stays off, as in every service (their `create_app` turns it off; left",
    "on, it would defer to the instrumentation's middleware anyway). The services' own stage",
    "spans, made with the OpenTelemetry API, reach the instrumentation's tracer provider as",
    "they reach Servescope's in default (the edge's CLIENT span too, so a sampled downstream",
    "call has two). Installed by the bench in its own environment, with the workspace's pins",
    "except OpenTelemetry's: the newest aiohttp-client instrumentation (0.66b1) needs SDK",
    "1.45.1 where the workspace pins 1.45.2.",
]


def versions_line(versions: dict[str, str]) -> list[str]:
    """The doc's line naming the recipe's versions, when it was measured."""
    if not versions:
        return []
    return [
        "Recipe versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) + ".",
        "",
    ]
