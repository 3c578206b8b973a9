"""checkov's Kubernetes checks on every rendered values combination: no failure except the
deliberate ones in deploy/helm/checkov-exceptions.yaml, and none at all in production.

checkov runs from its own environment (`uv tool run`), as the bench runs its peers: its
pinned dependencies would fight the workspace's.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CHECKOV = "checkov==3.3.30"


def _uv() -> str:
    found = os.environ.get("UV") or shutil.which("uv")
    assert found, "uv is not on PATH: run ./scripts/bootstrap.sh"
    return found


def test_checkov_finds_nothing_but_the_listed_exceptions(helm, tmp_path: Path) -> None:
    exceptions = yaml.safe_load((helm.ROOT / "deploy/helm/checkov-exceptions.yaml").read_text())
    files: dict[str, str] = {}
    for case, values in helm.CASES.items():
        name = case.replace("/", "__") + ".yaml"
        files[name] = case
        (tmp_path / name).write_text(yaml.safe_dump_all(helm.render(list(values)).objects))
    scan = ["--directory", str(tmp_path), "--framework", "kubernetes", "--output", "json"]
    done = subprocess.run(
        [_uv(), "tool", "run", "--from", CHECKOV, "checkov", *scan, "--quiet", "--compact"],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.stdout.strip(), done.stderr[-3000:]
    report = json.loads(done.stdout)
    failed = report["results"]["failed_checks"] if isinstance(report, dict) else []
    assert isinstance(report, dict) and report["summary"]["passed"] > 100, done.stdout[:2000]

    unexpected, used = [], set()
    for finding in failed:
        case = files[Path(finding["file_path"]).name]
        allowed = [
            e
            for e in exceptions
            if e["check"] == finding["check_id"]
            and any(fnmatch.fnmatch(case, pattern) for pattern in e["cases"])
        ]
        if allowed:
            used.add(finding["check_id"])
        else:
            unexpected.append(
                f"{case}: {finding['check_id']} {finding['check_name']} ({finding['resource']})"
            )
    assert not unexpected, "\n".join(sorted(set(unexpected)))
    stale = {e["check"] for e in exceptions} - used
    assert not stale, f"exceptions that no longer fail, remove them: {stale}"
