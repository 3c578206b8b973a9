"""What the lab runner remembers, all under `.run/labs/` (never in the repository):

progress.json          per lab: started, passed, checks run, hints shown, the last answer
running.json           the lab whose processes run now: ports, URLs, PIDs
state/<id>.json        a lab's private run state (e.g. the fault `start` chose at random)
backup/<id>/           repository files a lab edits, as they were at `start`
prometheus/            the lab's Prometheus configuration and data
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def write_json(path: Path, data: Any) -> None:
    """Write atomically (a temp file renamed over the old one), so a crash leaves either."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    temp.replace(path)


@dataclass(frozen=True)
class Store:
    run_dir: Path

    @property
    def labs_dir(self) -> Path:
        return self.run_dir / "labs"

    @property
    def progress_path(self) -> Path:
        return self.labs_dir / "progress.json"

    @property
    def running_path(self) -> Path:
        return self.labs_dir / "running.json"

    @property
    def prometheus_dir(self) -> Path:
        return self.labs_dir / "prometheus"

    @property
    def alerting_dir(self) -> Path:
        return self.labs_dir / "alerting"

    def state_path(self, lab_id: str) -> Path:
        return self.labs_dir / "state" / f"{lab_id}.json"

    def backup_dir(self, lab_id: str) -> Path:
        return self.labs_dir / "backup" / lab_id

    # --- progress ------------------------------------------------------------------------

    def progress(self) -> dict[str, dict[str, Any]]:
        data = read_json(self.progress_path, {})
        labs = data.get("labs", {}) if isinstance(data, dict) else {}
        return labs if isinstance(labs, dict) else {}

    def lab_progress(self, lab_id: str) -> dict[str, Any]:
        entry = self.progress().get(lab_id, {})
        return entry if isinstance(entry, dict) else {}

    def update_progress(self, lab_id: str, **changes: Any) -> dict[str, Any]:
        """Merge `changes` into one lab's entry (None removes a key) and save."""
        labs = self.progress()
        entry = dict(labs.get(lab_id, {}))
        for key, value in changes.items():
            if value is None:
                entry.pop(key, None)
            else:
                entry[key] = value
        labs[lab_id] = entry
        write_json(self.progress_path, {"labs": labs, "updated_at": time.time()})
        return entry

    def clear_progress(self, lab_id: str) -> None:
        labs = self.progress()
        if labs.pop(lab_id, None) is not None:
            write_json(self.progress_path, {"labs": labs, "updated_at": time.time()})

    # --- the running lab -----------------------------------------------------------------

    def running(self) -> dict[str, Any] | None:
        data = read_json(self.running_path, None)
        return data if isinstance(data, dict) and data.get("lab") else None

    def set_running(self, record: dict[str, Any]) -> None:
        write_json(self.running_path, record)

    def clear_running(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.running_path.unlink()

    # --- a lab's private state -----------------------------------------------------------

    def state(self, lab_id: str) -> dict[str, Any]:
        data = read_json(self.state_path(lab_id), {})
        return data if isinstance(data, dict) else {}

    def save_state(self, lab_id: str, state: dict[str, Any]) -> None:
        write_json(self.state_path(lab_id), state)

    def clear_state(self, lab_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.state_path(lab_id).unlink()
