"""A lab's resource limits: `python -m servescope.cli.labs.kubelet`, run in the background.

`servescope up --limit` keeps its cgroups and the cAdvisor/kube-state-metrics exporter on
threads of its own foreground process (servescope.cli.local.containers). A lab returns to the
learner's shell, so the same pieces run here in a process of their own, recorded by PID like
every other lab process (as `kubelet`): it makes one cgroup per service
(servescope.cli.local.cgroups, the limits of lab.yaml's `limits` and the workspace's
`limits_file`), writes where they are to --state (JSON) for `lab start` to launch each
service inside its cgroup, serves /metrics/cadvisor and /metrics/kube-state-metrics on
--port (servescope.cli.local.exporter, scraped by the lab's Prometheus as jobs `kubelet` and
`kube-state-metrics`), and on SIGTERM stops serving and removes the cgroups. `lab stop` stops
the services first (they start after it), so the cgroups are empty by then.

Where the kernel gives no writable memory and cpu cgroups, --state says why
({"error": ...}) and the services run unlimited; the exporter then has no cAdvisor series.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from servescope.cli.local.cgroups import Cgroup, CgroupV1, CgroupV2, Limits, detect, parse_limits
from servescope.cli.local.exporter import Container, Exporter


def describe(cgroup: Cgroup) -> dict[str, Any]:
    if isinstance(cgroup, CgroupV2):
        return {"version": 2, "path": str(cgroup.path)}
    assert isinstance(cgroup, CgroupV1)
    return {
        "version": 1,
        "memory": str(cgroup.memory),
        "cpu": str(cgroup.cpu),
        "cpuacct": str(cgroup.cpuacct),
    }


def from_description(name: str, limits: Limits, data: dict[str, Any]) -> Cgroup:
    """The Cgroup a service is launched into (only `wrap` is used: it already exists)."""
    if data["version"] == 2:
        return CgroupV2(name, limits, Path(data["path"]))
    return CgroupV1(name, limits, Path(data["memory"]), Path(data["cpu"]), Path(data["cpuacct"]))


def _write(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data))
    partial.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m servescope.cli.labs.kubelet")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--service", action="append", default=[], help="every service")
    parser.add_argument("--limit", action="append", default=[], help="SERVICE=memory:Q,cpu:Q")
    args = parser.parse_args(argv)
    limits: dict[str, Limits] = {}
    for spec in args.limit:
        name, _, text = spec.partition("=")
        limits[name] = parse_limits(text)

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())

    cgroups: dict[str, Cgroup] = {}
    driver, how = detect(None)
    state: dict[str, Any] = {"pid": os.getpid(), "cgroups": {}}
    if driver is None:
        state["error"] = f"resource limits need writable memory and cpu cgroups ({how})"
    else:
        driver.remove_stale()  # left by a lab that was killed, never cleaned up
        try:
            for name in args.service:
                cgroups[name] = driver.new(name, limits.get(name, Limits()))
        except OSError as exc:
            state["error"] = f"resource limits need writable cgroups ({exc})"
            for cgroup in cgroups.values():
                with contextlib.suppress(OSError):
                    cgroup.remove()
            cgroups = {}
    state["cgroups"] = {name: describe(c) for name, c in cgroups.items()}
    containers = [
        Container(name, limits.get(name, Limits()) if name in cgroups else Limits(), cgroups.get(name))
        for name in args.service
    ]
    exporter = Exporter(containers, dict, args.port)
    try:
        exporter.start()
    except OSError as exc:
        state["error"] = f"the exporter cannot listen on 127.0.0.1:{args.port} ({exc})"
        _write(args.state, state)
        for cgroup in cgroups.values():
            with contextlib.suppress(OSError):
                cgroup.remove()
        return 1
    _write(args.state, state)
    print(f"kubelet: cgroups {', '.join(cgroups) or 'none'}; exporter on {exporter.url}", flush=True)
    try:
        while not stopping.wait(0.5):
            pass
    finally:
        exporter.stop()
        for name, cgroup in cgroups.items():
            try:
                cgroup.remove()
            except OSError as exc:
                print(f"kubelet: could not remove the cgroup of {name}: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
