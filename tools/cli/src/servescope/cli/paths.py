"""Where the repository's files are. Only the CLI knows; services get paths passed in."""

from __future__ import annotations

from pathlib import Path


def repo_root() -> Path:
    """The checkout this command runs from: the first parent holding the workspace layout.

    Falls back to the working directory, so a command run from a checkout still works when
    the package is installed elsewhere.
    """
    for base in (Path(__file__).resolve(), Path.cwd().resolve() / "_"):
        for parent in base.parents:
            if (parent / "services" / "classifier" / "model").is_dir() and (
                parent / "deploy"
            ).is_dir():
                return parent
    return Path.cwd()


def bundled_model_dir() -> Path:
    return repo_root() / "services" / "classifier" / "model"


def bundled_model() -> Path:
    return bundled_model_dir() / "digits-cnn.onnx"


def bundled_model_card() -> Path:
    return bundled_model_dir() / "model-card.json"


def heldout_dir() -> Path:
    """The bundled model's held-out digits: the traffic generator's normal inputs."""
    return bundled_model_dir() / "heldout"


def model_repository_dir() -> Path:
    """Where `servescope models build` writes a model repository by default (git-ignored)."""
    return repo_root() / "build" / "models"
