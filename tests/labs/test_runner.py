"""The lab runner on small labs made up here (no services): the format, the workspace that
never loses a learner's edit, hints, answers, progress, exact restores, and processes
stopped by PID only when they are ours."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from servescope.cli.labs import LabError, LabFormatError, Ports, find, load_lab
from servescope.cli.labs.model import discover
from servescope.cli.labs.processes import LabStack, pid_alive, start_time, stop_pid
from servescope.cli.labs.store import Store

from .conftest import LabCLI, free_port_base

CHECK_FILE = """
from __future__ import annotations


def check(ctx):
    text = (ctx.workspace / "value.txt").read_text().strip()
    ctx.require(text == "42", "value.txt says 42", f"it says {text!r}; think again")
    ctx.require(ctx.lab["id"] == ctx.lab.id, "the lab reads both ways")
"""


def make_lab(
    root: Path,
    lab_id: str = "beginner/01-toy",
    extra: str = "",
    check: str = CHECK_FILE,
    starter: dict[str, str] | None = None,
    solution: dict[str, str] | None = None,
    needs: str = "[]",
) -> Path:
    stage = lab_id.split("/")[0]
    folder = root / "labs" / lab_id
    (folder / "starter").mkdir(parents=True)
    (folder / "solution").mkdir()
    (folder / "lab.yaml").write_text(
        f"id: {lab_id}\nstage: {stage}\ntitle: A toy lab\nminutes: 5\nprerequisites: []\n"
        f"needs: {needs}\nhints: [weak hint, stronger hint, the answer is 42]\n" + extra
    )
    (folder / "check.py").write_text(check)
    (folder / "README.md").write_text("# Toy\n\n## Steps\n\n1. Edit work/value.txt.\n2. Check.\n")
    for name, text in (starter or {"value.txt": "TODO\n"}).items():
        (folder / "starter" / name).write_text(text)
    for name, text in (solution or {"value.txt": "42\n"}).items():
        (folder / "solution" / name).write_text(text)
    return folder


@pytest.fixture
def toy(tmp_path: Path) -> LabCLI:
    root = tmp_path / "repo"
    make_lab(root)
    return LabCLI(root, tmp_path / "run", free_port_base())


def test_start_check_hint_solve_reset(toy: LabCLI) -> None:
    work = toy.root / "labs/beginner/01-toy/work"
    code, out = toy("start", "beginner/01-toy")
    assert code == 0, out
    assert (work / "value.txt").read_text() == "TODO\n"
    assert "next:  Edit work/value.txt. (the guide has the commands)" in out

    code, out = toy("check", "beginner/01-toy")
    assert code == 1
    assert "FAIL  value.txt says 42\n        hint: it says 'TODO'; think again" in out
    assert "ok    the lab reads both ways" in out

    hints = [toy("hint", "beginner/01-toy")[1] for _ in range(4)]
    assert hints[0].startswith("hint 1 of 3: weak hint")
    assert hints[2].startswith("hint 3 of 3: the answer is 42")
    assert "lab solve" in hints[3] and hints[3].startswith("hint 3 of 3")

    (work / "value.txt").write_text("41\n")
    code, out = toy("start", "beginner/01-toy")  # again: the learner's edit stays
    assert code == 0 and "kept your edits" in out
    assert (work / "value.txt").read_text() == "41\n"

    code, out = toy("solve", "beginner/01-toy")
    assert code == 1 and "not overwriting your edits (value.txt)" in out
    assert (work / "value.txt").read_text() == "41\n"
    assert toy("solve", "beginner/01-toy", "--force")[0] == 0
    code, out = toy("check", "beginner/01-toy")
    assert code == 0 and "passed: beginner/01-toy" in out

    code, out = toy("list")
    assert "beginner/01-toy" in out and "passed (" in out and "solved" in out
    code, out = toy("status")
    assert "current lab: beginner/01-toy" in out and "hints      3 of 3 shown" in out

    assert toy("reset", "beginner/01-toy")[0] == 0
    assert (work / "value.txt").read_text() == "TODO\n"
    assert toy.store.lab_progress("beginner/01-toy") == {}
    assert "not started" in toy("list")[1]


def test_start_force_replaces_edits_with_the_starter(toy: LabCLI) -> None:
    work = toy.root / "labs/beginner/01-toy/work"
    toy("start", "beginner/01-toy")
    (work / "value.txt").write_text("mine\n")
    assert toy("start", "beginner/01-toy", "--force")[0] == 0
    assert (work / "value.txt").read_text() == "TODO\n"


def test_answer_records_then_checks(tmp_path: Path) -> None:
    check = (
        "def check(ctx):\n"
        "    ctx.require(ctx.answer == 'classifier infer', 'the answer', 'look again')\n"
    )
    make_lab(tmp_path / "repo", "intermediate/01-quiz", "answer: {prompt: 'Which step?'}\n", check)
    cli = LabCLI(tmp_path / "repo", tmp_path / "run", free_port_base())
    cli("start", "intermediate/01-quiz")
    code, out = cli("answer", "intermediate/01-quiz", "classifier", "resize")
    assert code == 1 and "answer recorded: classifier resize" in out and "look again" in out
    code, out = cli("answer", "intermediate/01-quiz", "classifier", "infer")
    assert code == 0, out
    # The learner's answer is an edit too: solve asks before replacing it.
    assert cli("solve", "intermediate/01-quiz")[0] == 1


def test_a_broken_checker_fails_with_a_message_not_a_traceback(tmp_path: Path) -> None:
    make_lab(tmp_path / "repo", check="def check(ctx):\n    raise KeyError('urls')\n")
    cli = LabCLI(tmp_path / "repo", tmp_path / "run", free_port_base())
    cli("start", "beginner/01-toy")
    code, out = cli("check", "beginner/01-toy")
    assert code == 1
    assert "FAIL  the checker ran to the end" in out and "KeyError" in out


def test_repository_files_come_back_byte_for_byte(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    make_lab(root, extra="repo_files: [config/*.yml, docs/page.md, docs/new.md]\n")
    (root / "config").mkdir()
    (root / "config/a.yml").write_bytes(b"a: 1\r\n")  # bytes, line endings and all
    (root / "config/b.yml").write_text("b: 2\n")
    (root / "config/b.yml").chmod(0o600)
    (root / "docs").mkdir()
    (root / "docs/page.md").write_text("# Page\n")
    cli = LabCLI(root, tmp_path / "run", free_port_base())
    code, out = cli("start", "beginner/01-toy")
    assert code == 0 and "backed up the 4 repository files" in out

    (root / "config/a.yml").write_text("a: changed\n")
    (root / "config/b.yml").unlink()
    (root / "config/c.yml").write_text("c: new\n")
    (root / "docs/new.md").write_text("created by the learner\n")
    code, out = cli("start", "beginner/01-toy")  # a second start keeps the first backup
    assert "backed up" not in out
    assert cli("solve", "beginner/01-toy")[0] == 1  # the repo edits count as edits

    code, out = cli("reset", "beginner/01-toy")
    assert code == 0, out
    assert (root / "config/a.yml").read_bytes() == b"a: 1\r\n"
    assert (root / "config/b.yml").read_text() == "b: 2\n"
    assert (root / "config/b.yml").stat().st_mode & 0o777 == 0o600
    assert not (root / "config/c.yml").exists()
    assert not (root / "docs/new.md").exists()
    assert (root / "docs/page.md").read_text() == "# Page\n"


@pytest.mark.parametrize(
    ("yaml_change", "message"),
    [
        ("id: beginner/01-other", "id must be 'beginner/01-toy'"),
        ("needs: [services, grafana]", "needs: unknown ['grafana']"),
        ("faults: ['preprocess:resize']", "write service:step:seconds"),
        ("hints: []", "hints is required"),
    ],
)
def test_malformed_labs_are_refused_with_the_reason(
    tmp_path: Path, yaml_change: str, message: str
) -> None:
    folder = make_lab(tmp_path / "repo")
    key = yaml_change.split(":")[0]
    lines = [
        line for line in (folder / "lab.yaml").read_text().splitlines() if not line.startswith(key)
    ]
    (folder / "lab.yaml").write_text("\n".join([*lines, yaml_change]) + "\n")
    with pytest.raises(LabFormatError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_lab(folder)


def test_labs_are_found_by_id_prefix_or_folder(tmp_path: Path) -> None:
    make_lab(tmp_path, "beginner/01-toy")
    make_lab(tmp_path, "advanced/02-other")
    assert [lab.id for lab in discover(tmp_path)] == ["beginner/01-toy", "advanced/02-other"]
    assert find(tmp_path, "01-toy").id == "beginner/01-toy"
    assert find(tmp_path, "labs/advanced/02").id == "advanced/02-other"
    with pytest.raises(LabError, match="no lab is called 'nope'"):
        find(tmp_path, "nope")


def test_ports_from_a_base_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Ports.choose().preprocess == 8000 and Ports.choose().prometheus == 9090
    assert Ports.choose(20000).services == {
        "classifier": 20001,
        "postprocess": 20002,
        "preprocess": 20000,
    }
    monkeypatch.setenv("SERVESCOPE_LAB_PORT_BASE", "30000")
    assert Ports.choose().responder == 30005


def test_a_busy_port_says_what_to_stop(tmp_path: Path) -> None:
    folder = make_lab(tmp_path / "repo", extra="")
    lab = load_lab(folder)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        stack = LabStack(lab, tmp_path, Store(tmp_path / "run"), Ports(port, 1, 2, 3, 4, 5))
        with pytest.raises(LabError) as caught:
            stack.check_ports(["preprocess"])
    message = str(caught.value)
    assert f"{port} (preprocess)" in message
    assert "servescope up" in message and "--port-base" in message


def test_another_running_lab_must_be_stopped_first(tmp_path: Path) -> None:
    make_lab(tmp_path / "repo", "beginner/01-toy", needs="[services]")
    make_lab(tmp_path / "repo", "beginner/02-next", needs="[services]")
    make_lab(tmp_path / "repo", "beginner/03-files")
    cli = LabCLI(tmp_path / "repo", tmp_path / "run", free_port_base())
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        cli.store.set_running(
            {
                "lab": "beginner/01-toy",
                "urls": {},
                "ports": {},
                "started_at": time.time(),
                "processes": [
                    {"name": "x", "pid": sleeper.pid, "start_time": start_time(sleeper.pid)}
                ],
            }
        )
        code, out = cli("start", "beginner/02-next")
        assert code == 1 and "servescope lab stop beginner/01-toy" in out
        assert cli("start", "beginner/03-files")[0] == 0  # a lab of files needs no ports
        code, out = cli("stop")
        assert code == 0 and "stopped beginner/01-toy: x" in out
        assert sleeper.wait(10) is not None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_recycled_pid_is_never_signalled(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        if start_time(sleeper.pid) is None:
            pytest.skip("no /proc here: start times are not available")
        assert not stop_pid(sleeper.pid, "1")  # a different start time: someone else's
        assert sleeper.poll() is None
        assert stop_pid(sleeper.pid, start_time(sleeper.pid))
        assert not pid_alive(sleeper.pid)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_state_files_are_json_under_run_labs(toy: LabCLI) -> None:
    toy("start", "beginner/01-toy")
    toy("hint", "beginner/01-toy")
    progress = json.loads((toy.run_dir / "labs/progress.json").read_text())
    entry = progress["labs"]["beginner/01-toy"]
    assert entry["hints_shown"] == 1 and entry["started_at"] <= time.time()
    assert not any(p.name == "progress.json" for p in toy.root.rglob("*"))
    assert os.stat(toy.run_dir / "labs").st_mode


def test_env_files_are_parsed_strictly(tmp_path: Path) -> None:
    from servescope.cli.labs.workspace import read_env_file

    path = tmp_path / "x.env"
    path.write_text(
        textwrap.dedent("""\
        # comment
        export A=1
        B="two words"

        C='3'
        """)
    )
    assert read_env_file(path) == {"A": "1", "B": "two words", "C": "3"}
    path.write_text("NOT A SETTING\n")
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        read_env_file(path)


@pytest.mark.slow
def test_a_lab_that_needs_alertmanager_gets_the_whole_alert_path(tmp_path: Path) -> None:
    for binary in ("prometheus", "prometheus-alertmanager"):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} is not installed (apt-get install; .ci/run installs it)")
    check = textwrap.dedent("""\
        def check(ctx):
            ready = ctx.http_get(ctx.urls["alertmanager"] + "/-/ready").status
            ctx.require(ready == 200, "Alertmanager is ready")
            def active():
                answer = ctx.http_get(ctx.urls["prometheus"] + "/api/v1/alertmanagers").json()
                return answer["data"]["activeAlertmanagers"]
            ctx.require(ctx.wait_for(active, timeout=15), "Prometheus sends alerts to it")
            ctx.require(ctx.http_get(ctx.urls["responder"] + "/healthz").status == 200,
                        "the responder Alertmanager notifies is up")
            value = (ctx.workspace / "value.txt").read_text().strip()
            ctx.require(value == "42", "value.txt says 42")
        """)
    make_lab(tmp_path / "repo", check=check, needs="[alertmanager]")
    cli = LabCLI(tmp_path / "repo", tmp_path / "run", free_port_base())
    try:
        code, out = cli("start", "beginner/01-toy")
        assert code == 0, out
        names = {entry["name"] for entry in (cli.store.running() or {})["processes"]}
        assert names >= {"classifier", "postprocess", "preprocess", "prometheus"}
        assert names >= {"alertmanager", "responder"}
        code, out = cli("check", "beginner/01-toy")
        assert code == 1 and "FAIL  value.txt says 42" in out
        assert "ok    Prometheus sends alerts to it" in out, out
        assert cli("solve", "beginner/01-toy")[0] == 0
        code, out = cli("check", "beginner/01-toy")
        assert code == 0, out
        pids = cli.pids()
        assert cli("stop")[0] == 0
        assert not any(pid_alive(pid, started) for pid, started in pids)
    finally:
        cli.kill_all()


def test_one_malformed_lab_does_not_stop_the_others(tmp_path: Path) -> None:
    make_lab(tmp_path / "repo", "beginner/01-toy")
    broken = make_lab(tmp_path / "repo", "beginner/02-half-written")
    (broken / "check.py").unlink()
    cli = LabCLI(tmp_path / "repo", tmp_path / "run", free_port_base())
    code, out = cli("list")
    assert code == 0 and "beginner/01-toy" in out
    assert "warning: beginner/02-half-written is not a valid lab" in out
    assert cli("start", "beginner/01-toy")[0] == 0
    code, out = cli("start", "beginner/02-half-written")
    assert code == 1 and "check.py is missing" in out
