"""schemathesis against the OpenAPI document of every HTTP service, responder included, live:
no 5xx, no answer outside what the document declares (status, body schema, content type,
headers), wrong methods answered 405 with `Allow`, schema-violating requests refused.

The documents declare the real request bodies (raw images or multipart, OIP v2 tensors,
Alertmanager's webhook) and every error status, so generated cases reach the handlers; the
served model's name is supplied, so they are not all 404s on random names.

schemathesis runs from its own environment (`uv tool run`), as the bench runs its peers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from servescope.cli.local.alerting import ResponderProcess
from servescope.cli.local.process import free_port
from servescope.cli.local.services import SERVICES, LocalStack
from servescope.cli.paths import bundled_model_card

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SCHEMATHESIS = "schemathesis==4.32.5"
MAX_EXAMPLES = 25
# Checks left out, and why. positive_data_acceptance expects every request that fits the
# document to succeed, but a document cannot say all a service checks: that the bytes are a
# PNG of at least 8x8 pixels, that a tensor is named as the model's input. Such requests get
# a clear 4xx, which the other checks still hold to the declared statuses and shapes.
EXCLUDED_CHECKS = ("positive_data_acceptance",)


def _uv() -> str:
    found = os.environ.get("UV") or shutil.which("uv")
    assert found, "uv is not on PATH: run ./scripts/bootstrap.sh"
    return found


@pytest.fixture(scope="module")
def urls(
    module_stack_starter, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    stack: LocalStack = module_stack_starter()
    run_dir = tmp_path_factory.mktemp("responder")
    responder = ResponderProcess(free_port(), run_dir, f"http://127.0.0.1:{free_port()}")
    responder.start(timeout=60)
    yield {**{name: stack.services[name].url for name in SERVICES}, "responder": responder.url}
    responder.stop()


@pytest.mark.parametrize("service", [*SERVICES, "responder"])
def test_schemathesis_finds_nothing(urls: dict[str, str], service: str, tmp_path: Path) -> None:
    model = json.loads(bundled_model_card().read_text())
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        f'[parameters]\n"path.name" = "{model["name"]}"\n"path.version" = "{model["version"]}"\n'
    )
    st = [_uv(), "tool", "run", "--from", SCHEMATHESIS, "st", "--config-file", str(config)]
    run = ["run", f"{urls[service]}/openapi.json", "--checks", "all", "--seed", "1"]
    limits = ["--exclude-checks", ",".join(EXCLUDED_CHECKS), "--max-examples", str(MAX_EXAMPLES)]
    done = subprocess.run(
        [*st, *run, *limits, "--no-color", "--workers", "1"],
        capture_output=True,
        text=True,
        timeout=540,
        cwd=tmp_path,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    generated = re.search(r"(\d+) generated", out)
    assert generated and int(generated.group(1)) > 50, out[-2000:]
