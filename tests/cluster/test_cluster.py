"""On a real cluster: install the observability stack and the chart, then run a prediction through
a port-forward and see Prometheus scrape the services.

pytest-kubernetes makes the cluster (k3d, kind or minikube, whichever is on PATH). It raises
instead of skipping when none is installed, so this module skips first, with the reason.
Needs docker (to build the images) and helm as well. Takes 10-20 minutes:

    uv run pytest -m cluster tests/cluster -v
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from servescope.cli import kube_stack as stack_cli

ROOT = Path(__file__).resolve().parents[2]
PROVIDERS = [name for name in ("k3d", "kind", "minikube") if shutil.which(name)]
SERVICES = ("preprocess", "classifier", "postprocess")
# Every image the chart runs under the profile below: the services and the alert responder
# (every lab profile turns it on: it receives the alerts of the rules the profile loads).
IMAGES = (*SERVICES, "responder")
TAG = "cluster-test"

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.slow,
    pytest.mark.timeout(3600),
    pytest.mark.skipif(
        not PROVIDERS,
        reason="no kind, k3d or minikube on PATH: install one of them (plus docker and helm) "
        "to run the cluster tests",
    ),
]


@pytest.fixture
def tools() -> None:
    missing = [tool for tool in ("docker", "helm", "kubectl") if not shutil.which(tool)]
    if missing:
        pytest.skip(f"{PROVIDERS[0]} is installed but {', '.join(missing)} is not")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(command: list[str], env: dict[str, str], timeout: float = 1800) -> None:
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, (
        f"{' '.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )


def _get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_stack_and_chart_serve_a_prediction(tools, k8s):
    k8s.create()
    env = {**os.environ, "KUBECONFIG": str(k8s.kubeconfig)}

    for service in IMAGES:
        image = f"servescope-{service}:{TAG}"
        _run(["docker", "build", "-f", f"services/{service}/Dockerfile", "-t", image, "."], env)
        k8s.load_image(image)

    # The stack, exactly as `servescope stack install` runs it.
    stack = stack_cli.load_stack(ROOT)
    for command in stack_cli.install_commands(stack, ROOT, timeout="20m"):
        _run(command, env)

    values = [
        "--set", "default.image.tag=" + TAG,
        "--set", "default.image.pullPolicy=Never",
        "--values", "deploy/helm/profiles/intermediate.yaml",
    ]  # fmt: skip
    # The namespace with its Pod Security labels first, as skaffold.yaml's hook applies it.
    _run(["kubectl", "apply", "-f", "deploy/helm/namespace.yaml"], env)
    _run(
        ["helm", "upgrade", "--install", "servescope", "deploy/helm/servescope", "--namespace",
         "servescope", "--wait", "--timeout", "10m", *values],
        env,
    )  # fmt: skip

    # Every Service the project relies on (port-forwards, datasources) exists.
    services = json.loads(
        subprocess.run(
            ["kubectl", "get", "services", "--namespace", stack.namespace, "--output", "json"],
            env=env, capture_output=True, text=True, check=True,
        ).stdout
    )  # fmt: skip
    names = {item["metadata"]["name"] for item in services["items"]}
    for release in stack.releases:
        for service in release.services.values():
            assert service["name"] in names, f"{release.name} has no Service {service['name']}"

    # A prediction through the edge, over a port-forward.
    image = sorted((ROOT / "services/classifier/model/heldout").glob("*.png"))[0]
    local = _free_port()
    with k8s.port_forwarding("svc/servescope-preprocess", local, 8000, namespace="servescope"):
        request = urllib.request.Request(
            f"http://127.0.0.1:{local}/v1/predict",
            data=image.read_bytes(),
            headers={"Content-Type": "image/png"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
    assert answer["label"] == image.stem.split("_")[-1], answer

    # Prometheus scrapes all three services through the chart's ServiceMonitor.
    local = _free_port()
    prometheus = stack.releases[0].services["prometheus"]
    with k8s.port_forwarding(
        f"svc/{prometheus['name']}", local, prometheus["port"], namespace=stack.namespace
    ):
        query = urllib.parse.urlencode({"query": 'sum by (job) (up{namespace="servescope"})'})
        deadline = time.monotonic() + 180
        jobs: dict[str, str] = {}
        while time.monotonic() < deadline:
            status, body = _get(f"http://127.0.0.1:{local}/api/v1/query?{query}")
            if status == 200:
                jobs = {
                    r["metric"]["job"]: r["value"][1] for r in json.loads(body)["data"]["result"]
                }
                if all(jobs.get(s) == "1" for s in IMAGES):
                    break
            time.sleep(5)
        assert all(jobs.get(s) == "1" for s in IMAGES), jobs
