"""Only the CLI knows where the repository is; it finds this checkout."""

from __future__ import annotations

from pathlib import Path

from servescope.cli.paths import bundled_model, bundled_model_dir, heldout_dir, repo_root

# tools/cli/tests/test_paths.py -> the checkout root is three folders up.
CHECKOUT = Path(__file__).resolve().parents[3]


def test_repo_root_and_bundled_model_point_into_this_checkout() -> None:
    assert repo_root() == CHECKOUT
    assert bundled_model_dir() == CHECKOUT / "services" / "classifier" / "model"
    assert bundled_model().is_file()
    assert (heldout_dir() / "labels.csv").is_file()


def test_repo_root_found_from_the_working_directory_too(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(CHECKOUT / "docs")
    assert repo_root() == CHECKOUT
