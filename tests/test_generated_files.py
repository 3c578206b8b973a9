"""Generated files (docs/telemetry.md, ...) must match what their sources produce now."""

from __future__ import annotations

from pathlib import Path

from servescope.cli.generate import generate_all, generators
from servescope.cli.paths import repo_root


def test_committed_generated_files_are_up_to_date() -> None:
    assert generate_all(check=True) == [], "run `make generate` and commit the result"


def test_the_check_notices_a_drifted_copy(tmp_path: Path) -> None:
    for relative, produce in generators(repo_root()).items():
        target = tmp_path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(produce())
    assert generate_all(check=True, root=tmp_path) == []
    first = next(iter(generators(repo_root())))
    (tmp_path / first).write_text((tmp_path / first).read_text() + "\nhand edit\n")
    assert generate_all(check=True, root=tmp_path) == [first]
