"""The models one classifier serves: the default model plus a model repository's. No HTTP here.

A model repository is a directory with one sub-directory per model: `<name>/model-card.json`
and the ONNX file the card's `file` names (Triton's layout, with our card in place of its
config.pbtxt). Anything else in the directory (an index file, a README) is ignored. The card
is the source of the model's name, version and file hash; a file whose hash differs from its
card is refused, since the card's accuracy would describe another model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servescope.classifier.model import LoadedModel, ModelLoadError, load_model

CARD_FILE = "model-card.json"
READY = "READY"  # OIP / Triton repository index states
LOADING = "LOADING"


class RepositoryError(ModelLoadError):
    """The repository cannot be served: unreadable, malformed, or more models than allowed."""


@dataclass(frozen=True)
class RepositoryEntry:
    """One model of a repository as its card describes it, before it is loaded."""

    name: str
    version: str
    path: Path
    sha256: str
    card: dict[str, Any]


def _entry(folder: Path, allowed_name: Callable[[str], bool]) -> RepositoryEntry:
    card_path = folder / CARD_FILE
    try:
        card = json.loads(card_path.read_text())
        name, version, file, sha256 = (
            str(card["name"]),
            str(card["version"]),
            str(card["file"]),
            str(card["sha256"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RepositoryError(f"unusable model card {card_path}: {exc}") from exc
    if name != folder.name:
        raise RepositoryError(f"{card_path} names model {name!r}; its folder is {folder.name!r}")
    if not allowed_name(name):
        raise RepositoryError(f"{card_path}: model name {name!r} is not a valid label value")
    path = folder / file
    if path.parent != folder:
        raise RepositoryError(f"{card_path}: 'file' must name a file in {folder}")
    return RepositoryEntry(name, version, path, sha256, card)


def scan(directory: Path, allowed_name: Callable[[str], bool]) -> list[RepositoryEntry]:
    """Every model in a repository directory, sorted by name."""
    try:
        folders = sorted(p for p in directory.iterdir() if (p / CARD_FILE).is_file())
    except OSError as exc:
        raise RepositoryError(f"cannot read model repository {directory}: {exc}") from exc
    return [_entry(folder, allowed_name) for folder in folders]


def resident_bytes() -> int:
    """This process's resident set size (Linux /proc; 0 where there is none)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


class ModelRepository:
    """The served models by name, what each took in memory, and the repository index."""

    def __init__(self, max_models: int) -> None:
        self.max_models = max_models
        self.default: LoadedModel | None = None
        self.models: dict[str, LoadedModel] = {}
        self.memory_bytes: dict[str, int] = {}
        self.pending: dict[str, RepositoryEntry] = {}

    def __len__(self) -> int:
        return len(self.models)

    def load(
        self,
        path: Path,
        name: str | None = None,
        version: str | None = None,
        threads: int = 1,
        sha256: str | None = None,
    ) -> LoadedModel:
        """Load and warm up one model; its memory is the growth of RSS across that.

        Models load one at a time, so the delta is this model's: the file's bytes, the
        onnxruntime session with its initializers and the warm-up's arena. onnxruntime has
        no per-session figure to ask for instead.
        """
        before = resident_bytes()
        model = load_model(path, name, version, threads)
        if sha256 is not None and model.sha256 != sha256:
            raise RepositoryError(f"{path} has sha256 {model.sha256}; its model card says {sha256}")
        self.memory_bytes[model.name] = max(0, resident_bytes() - before)
        self.models[model.name] = model
        self.pending.pop(model.name, None)
        if self.default is None:
            self.default = model
        return model

    def plan(self, entries: list[RepositoryEntry]) -> list[RepositoryEntry]:
        """The entries still to load after the default model, once checked against it.

        A repository may hold the default model too (the built ones hold digits-cnn); then
        it must be the very same file, and it is loaded once.
        """
        default = self.default
        if default is None:
            raise RepositoryError("load the default model before planning the repository")
        names = {e.name for e in entries} | {default.name}
        if len(names) > self.max_models:
            raise RepositoryError(
                f"{len(names)} models (the default and the repository's) exceed the "
                f"telemetry contract's max_models of {self.max_models}"
            )
        todo = []
        for entry in entries:
            if entry.name != default.name:
                todo.append(entry)
            elif entry.sha256 != default.sha256:
                raise RepositoryError(
                    f"the repository's {entry.name} (sha256 {entry.sha256}) is not the default "
                    f"model of the same name (sha256 {default.sha256})"
                )
        self.pending = {e.name: e for e in todo}
        return todo

    def find(self, name: str, version: str | None = None) -> LoadedModel | None:
        model = self.models.get(name)
        if model is None or (version is not None and version != model.version):
            return None
        return model

    def index(self) -> list[dict[str, str]]:
        """The repository index (OIP / Triton): every model, loaded or still loading."""
        rows = [
            {"name": m.name, "version": m.version, "state": READY} for m in self.models.values()
        ]
        rows += [
            {"name": e.name, "version": e.version, "state": LOADING} for e in self.pending.values()
        ]
        return sorted(rows, key=lambda row: row["name"])
