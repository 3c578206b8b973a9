"""docs/architecture.md's package map matches the workspace, and its import rules hold."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "architecture.md").read_text()


def _members() -> list[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    members: list[str] = data["tool"]["uv"]["workspace"]["members"]
    return members


def _package_map() -> dict[str, tuple[str, set[str]]]:
    """member folder -> (package, allowed servescope packages) from the doc's table."""
    section = DOC.split("## Package map", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, set[str]]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        folder, package = cells[0].strip("`"), cells[1].strip("`")
        allowed = set(re.findall(r"`(\w+)`", cells[3]))
        rows[folder] = (package, allowed)
    return rows


def test_the_package_map_lists_exactly_the_workspace_members() -> None:
    assert sorted(_package_map()) == sorted(_members())


@pytest.mark.parametrize("member", _members())
def test_each_member_holds_the_package_the_map_names(member: str) -> None:
    package, _ = _package_map()[member]
    assert (ROOT / member / "src" / Path(*package.split("."))).is_dir()


def _imported_members(member: str) -> dict[str, set[str]]:
    """servescope.<x> packages imported by a member's source -> the files importing them."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / member / "src").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                parts = name.split(".")
                if parts[0] == "servescope" and len(parts) > 1:
                    found.setdefault(parts[1], set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("member", _members())
def test_each_member_imports_only_what_the_map_allows(member: str) -> None:
    package, allowed = _package_map()[member]
    own = package.split(".")[1]
    imported = _imported_members(member)
    imported.pop(own, None)
    if "everything" in _package_map_row_text(member):
        return
    unexpected = {name: sorted(files) for name, files in imported.items() if name not in allowed}
    assert unexpected == {}, f"{member} may import only {sorted(allowed)}"


def _package_map_row_text(member: str) -> str:
    for line in DOC.splitlines():
        if line.startswith(f"| `{member}` "):
            return line
    return ""


def test_no_deployed_code_looks_for_the_repository() -> None:
    """Only the CLI resolves repository paths; everything that ships gets paths passed in."""
    offenders = []
    for member in _members():
        if member == "tools/cli":
            continue
        for path in (ROOT / member / "src").rglob("*.py"):
            text = path.read_text()
            if "repo_root" in text or re.search(r"Path\(__file__\)[^\n]*parents", text):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
