"""Reference solution: find the target that went down, read its log's last words (the
`fault_crash` line with its request count), and answer."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext

SERVICES = ("preprocess", "classifier", "postprocess")


def _crashed(ctx: CheckContext) -> tuple[str, int] | None:
    down = {
        s.labels.get("job")
        for s in ctx.query("min_over_time(up[10m]) == 0")
        if s.labels.get("job") in SERVICES
    }
    for service in sorted(down):
        log = ctx.log_dir / f"{service}.log"
        counts = [
            int(json.loads(line)["requests"])
            for line in log.read_text(errors="replace").splitlines()
            if '"fault_crash"' in line
        ]
        if counts:
            return service, min(counts)
    return None


def solve(ctx: CheckContext) -> None:
    found = ctx.wait_for(lambda: _crashed(ctx), timeout=60, interval=1)
    if not found:
        raise RuntimeError("no crashed service found")
    service, requests = found
    ctx.record_answer(f"{service} {requests} crash")
