"""Every lab under labs/, end to end against real processes: after `start` its checker fails
with a hint; after `solve` it passes; `reset` restores the start (workspace equal to the
starter, repository files byte for byte, processes gone, ports free). And a reference
solution made wrong in a realistic way fails its checker with the specific hint."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from servescope.cli.labs import Lab, discover, find
from servescope.cli.labs.processes import pid_alive, port_in_use
from servescope.cli.labs.workspace import expand_repo_files, files_under

from .conftest import CHECKOUT, LabCLI, copy_repository, free_port_base

LABS = discover(CHECKOUT)


def _skip_without_tools(lab: Lab) -> None:
    needed = list(lab.tools) + (["prometheus"] if lab.needs_prometheus else [])
    if "alertmanager" in lab.needs and not shutil.which("prometheus-alertmanager"):
        needed.append("prometheus-alertmanager")
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{lab.id} needs {', '.join(missing)} (apt-get install; .ci/run installs them)")


def _repo_snapshot(root: Path, lab: Lab) -> dict[str, str]:
    return {
        relative: hashlib.sha256((root / relative).read_bytes()).hexdigest()
        for relative in expand_repo_files(root, lab.repo_files)
        if (root / relative).is_file()
    }


def _print_logs(run_dir: Path, lines: int = 15) -> None:
    for log in sorted(run_dir.rglob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        print(f"--- {log}", *tail, sep="\n")


def _ended_by_crash_fault(log: str) -> bool:
    path = Path(log)
    return path.is_file() and '"fault_crash"' in path.read_text(errors="replace")


def _contents(folder: Path) -> dict[str, bytes]:
    return {relative: path.read_bytes() for relative, path in files_under(folder).items()}


def test_labs_exist_in_every_stage_so_far() -> None:
    assert LABS, "no labs under labs/"
    ids = [lab.id for lab in LABS]
    assert len(ids) == len(set(ids))
    assert {lab.stage for lab in LABS} >= {"beginner", "intermediate"}


def test_docs_list_every_lab() -> None:
    docs = (CHECKOUT / "docs" / "labs.md").read_text()
    missing = [lab.id for lab in LABS if f"`{lab.id}`" not in docs]
    assert not missing, f"docs/labs.md does not list {missing}"


@pytest.mark.parametrize("lab_id", [lab.id for lab in LABS])
def test_lab_readme_follows_the_format(lab_id: str) -> None:
    lab = find(CHECKOUT, lab_id)
    readme = lab.readme.read_text()
    for section in (
        "## Scenario",
        "## Goal",
        "## Why it matters in production",
        "## Steps",
        '## What "done" means',
        "## Hints",
        "## Going further",
        "## On Minikube",
    ):
        assert section in readme, f"{lab.readme}: no {section!r} section"
    assert f"skaffold dev -p {lab.stage}" in readme or lab.stage == "drills"
    assert f"servescope lab start {lab.id}" in readme
    assert "solution" not in lab.checker.read_text().replace("reference solution", ""), (
        "checkers never look at the reference solution"
    )


@pytest.mark.slow
@pytest.mark.parametrize("lab_id", [lab.id for lab in LABS])
def test_check_fails_at_start_passes_after_solve_and_reset_restores(
    lab_id: str, lab_repo: Path, lab_cli: LabCLI
) -> None:
    lab = find(lab_repo, lab_id)
    _skip_without_tools(lab)
    repo_before = _repo_snapshot(lab_repo, lab)
    try:
        code, out = lab_cli("start", lab.id)
        assert code == 0, out
        assert _contents(lab.workspace) == _contents(lab.starter)
        pids = lab_cli.pids()
        if lab.needs_services:
            # Every process is running, unless the lab's own crash fault has already ended it
            # (the crash-loop drill: 20 to 60 requests at 8 a second can pass during start).
            logs = lab_cli.logs()
            dead = [pid for pid, started in pids if not pid_alive(pid, started)]
            crashed = [pid for pid in dead if _ended_by_crash_fault(logs.get(pid, ""))]
            assert pids and dead == crashed, out

        code, out = lab_cli("check", lab.id)
        assert code == 1, f"the checker passes on the starting state:\n{out}"
        assert "FAIL" in out and "hint: " in out, out

        code, out = lab_cli("solve", lab.id)
        assert code == 0, out
        code, out = lab_cli("check", lab.id)
        assert code == 0, f"the reference solution does not pass:\n{out}"
        assert f"passed: {lab.id}" in out
        pids += [p for p in lab_cli.pids() if p not in pids]  # a restart starts new ones

        code, out = lab_cli("reset", lab.id)
        assert code == 0, out
    except BaseException:
        _print_logs(lab_cli.run_dir)  # shown by pytest with the failure
        raise
    finally:
        lab_cli("reset", lab.id)  # leave the shared copy as it was, whatever happened
    assert _contents(lab.workspace) == _contents(lab.starter)
    assert _repo_snapshot(lab_repo, lab) == repo_before, "reset did not restore the repo files"
    assert not any(pid_alive(pid, started) for pid, started in pids), "processes outlive reset"
    assert lab_cli.store.running() is None
    assert not any(port_in_use(port) for port in lab_cli.ports())
    assert lab.id not in lab_cli.store.progress()


@pytest.mark.slow
def test_a_realistic_wrong_solution_fails_with_its_hint(tmp_path: Path) -> None:
    """The RED lab's reference, with the request rate counting every route of the edge:
    the mistake of a dashboard that shows probes and scrapes as traffic."""
    root = copy_repository(tmp_path / "repo")
    lab = find(root, "beginner/02-red-queries")
    _skip_without_tools(lab)
    reference = lab.solution / "queries.yaml"
    text = reference.read_text()
    probe_filter = ', http_route!~"/metrics|/healthz|/readyz"}[1m]))\n\n# Share'
    assert probe_filter in text, "the reference's rate query changed; update this test"
    reference.write_text(text.replace(probe_filter, "}[1m]))\n\n# Share", 1))
    cli = LabCLI(root, tmp_path / "run", free_port_base())
    try:
        assert cli("start", lab.id)[0] == 0
        assert cli("solve", lab.id)[0] == 0
        code, out = cli("check", lab.id)
        assert code == 1, out
        assert "FAIL  rate: your query gives the edge's request rate: yours is" in out
        assert "it counts the probes and scrapes (/healthz, /readyz, /metrics) as traffic" in out
        assert "ok    error_ratio" in out and "ok    p95_seconds" in out, out
    finally:
        cli("reset", lab.id)
        cli.kill_all()
