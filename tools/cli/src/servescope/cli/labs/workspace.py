"""The learner's files: the workspace `labs/<id>/work/` (from starter/) and, for labs that
edit the repository itself, exact backups of those repository files.

Nothing here overwrites a learner's edit silently: `start` keeps workspace files that differ
from the starter, `solve` refuses on edits unless forced, and only `reset` (an explicit
request to start over) puts everything back as it was.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import shutil
from pathlib import Path

from servescope.cli.labs.model import Lab
from servescope.cli.labs.store import Store, read_json, write_json

_SKIP_PARTS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}


def files_under(folder: Path) -> dict[str, Path]:
    """Relative path -> file, for every regular file under `folder` (caches left out)."""
    if not folder.is_dir():
        return {}
    return {
        path.relative_to(folder).as_posix(): path
        for path in sorted(folder.rglob("*"))
        if path.is_file()
        and not _SKIP_PARTS & set(path.relative_to(folder).parts)
        and path.suffix != ".pyc"
    }


def _same(a: Path, b: Path) -> bool:
    return a.read_bytes() == b.read_bytes()


def prepare_workspace(lab: Lab, force: bool = False) -> tuple[list[str], list[str]]:
    """Copy starter/ into work/: missing files are created, files that differ from the starter
    are kept unless `force`. Returns (written, kept)."""
    lab.workspace.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    kept: list[str] = []
    for relative, source in files_under(lab.starter).items():
        target = lab.workspace / relative
        if target.is_file() and _same(source, target):
            continue
        if target.exists() and not force:
            kept.append(relative)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        written.append(relative)
    return written, kept


def workspace_edits(lab: Lab) -> list[str]:
    """Workspace files that are not exactly the starter's: changed, added or deleted."""
    starter = files_under(lab.starter)
    work = files_under(lab.workspace)
    edits = [
        rel for rel, path in work.items() if rel not in starter or not _same(path, starter[rel])
    ]
    if lab.workspace.is_dir():
        edits += [rel for rel in starter if rel not in work]
    return sorted(edits)


def restore_workspace(lab: Lab) -> None:
    """work/ becomes exactly starter/ (or an empty folder when the lab has no starter)."""
    if lab.workspace.exists():
        shutil.rmtree(lab.workspace)
    if lab.starter.is_dir():
        shutil.copytree(lab.starter, lab.workspace, ignore=shutil.ignore_patterns(*_SKIP_PARTS))
    else:
        lab.workspace.mkdir(parents=True)


def copy_solution(lab: Lab) -> list[str]:
    """Copy solution/ over work/ (answer.txt and solve.py are the runner's, not files)."""
    written = []
    for relative, source in files_under(lab.solution).items():
        if relative in ("answer.txt", "solve.py"):
            continue
        target = lab.workspace / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        written.append(relative)
    return written


# --- repository files a lab edits --------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def expand_repo_files(root: Path, patterns: tuple[str, ...]) -> list[str]:
    """Repository-relative paths a lab declares; globs expand to the files they match now."""
    found: set[str] = set()
    for pattern in patterns:
        if glob.has_magic(pattern):
            found.update(
                Path(p).relative_to(root).as_posix()
                for p in glob.glob(str(root / pattern), recursive=True)
                if Path(p).is_file()
            )
        else:
            found.add(pattern)
    return sorted(found)


def _manifest_path(store: Store, lab: Lab) -> Path:
    return store.backup_dir(lab.id) / "manifest.json"


def has_backup(store: Store, lab: Lab) -> bool:
    return _manifest_path(store, lab).is_file()


def backup_repo_files(root: Path, store: Store, lab: Lab) -> int:
    """Save the lab's repository files as they are now, once: a second `start` keeps the
    first backup, which is the state `reset` must return to. Returns files saved."""
    if not lab.repo_files or has_backup(store, lab):
        return 0
    folder = store.backup_dir(lab.id)
    files: dict[str, dict[str, str | bool | int]] = {}
    for relative in expand_repo_files(root, lab.repo_files):
        source = root / relative
        if source.is_file():
            target = folder / "files" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            files[relative] = {
                "existed": True,
                "sha256": _sha256(source),
                "mode": source.stat().st_mode & 0o7777,
            }
        else:
            files[relative] = {"existed": False}
    write_json(_manifest_path(store, lab), {"lab": lab.id, "root": str(root), "files": files})
    return len(files)


def _manifest(store: Store, lab: Lab) -> dict[str, dict[str, str | bool | int]]:
    data = read_json(_manifest_path(store, lab), {})
    files = data.get("files", {}) if isinstance(data, dict) else {}
    return files if isinstance(files, dict) else {}


def repo_edits(root: Path, store: Store, lab: Lab) -> list[str]:
    """Repository files of the lab that differ from the backup taken at `start`."""
    if not has_backup(store, lab):
        return []
    manifest = _manifest(store, lab)
    edits = []
    for relative, entry in manifest.items():
        path = root / relative
        if entry.get("existed"):
            if not path.is_file() or _sha256(path) != entry.get("sha256"):
                edits.append(relative)
        elif path.exists():
            edits.append(relative)
    edits += [r for r in expand_repo_files(root, lab.repo_files) if r not in manifest]
    return sorted(set(edits))


def restore_repo_files(root: Path, store: Store, lab: Lab) -> list[str]:
    """Put every backed-up file back byte for byte (and mode), remove files the lab created,
    and drop the backup. Returns the paths restored or removed."""
    if not has_backup(store, lab):
        return []
    manifest = _manifest(store, lab)
    folder = store.backup_dir(lab.id) / "files"
    changed = repo_edits(root, store, lab)
    for relative, entry in manifest.items():
        path = root / relative
        if entry.get("existed"):
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / relative, path)
            path.chmod(int(entry.get("mode", 0o644)))
        elif path.is_file():
            path.unlink()
    for relative in expand_repo_files(root, lab.repo_files):
        if relative not in manifest:
            with contextlib.suppress(FileNotFoundError):
                (root / relative).unlink()
    shutil.rmtree(store.backup_dir(lab.id), ignore_errors=True)
    return changed


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (blank lines and # comments ignored; optional quotes stripped)."""
    env: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{path}:{number}: expected KEY=VALUE, got {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env
