"""Resource limits in local mode on the real kernel: OOM kills, restarts, throttling, fallback.

The classifier runs in a memory cgroup of 128 MiB (local mode's `ContainerRuntime`, the same
code `servescope up --limit` uses) with a memory fault switched on by its environment
(SERVESCOPE_FAULTS, servescope.runtime.faults) and traffic through the edge until the kernel's
OOM killer ends it. The supervisor must record `OOMKilled` and restart it; the local exporter's
cAdvisor and kube-state-metrics series, scraped every second by a real Prometheus, must tell
the story (`cache`: process RSS stays low while the cgroup's usage reaches the limit; `leak`:
RSS itself reaches it); the production rule ServescopeContainerOOMKilled must fire and reach
the responder through Alertmanager, whose incident note names the classifier and memory.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from servescope.cli.local.alerting import LocalAlerting, with_rule_files
from servescope.cli.local.cgroups import Limits, detect
from servescope.cli.local.containers import ContainerRuntime
from servescope.cli.local.process import free_port
from servescope.cli.local.services import PrometheusProcess, prometheus_config
from servescope.cli.paths import heldout_dir, repo_root
from servescope.loadgen.inputs import heldout_samples

pytestmark = pytest.mark.slow

MiB = 1 << 20
ALERT = "ServescopeContainerOOMKilled"
RULES = repo_root() / "deploy" / "prometheus" / "rules" / "kubernetes.alerts.yml"


def _tool(name: str) -> None:
    import shutil

    if shutil.which(name) is None:
        pytest.skip(f"{name} is missing: apt-get install {name} (.ci/run installs it)")


@pytest.fixture
def cgroups_here() -> None:
    driver, why = detect()
    if driver is None:
        pytest.skip(f"no writable memory and cpu cgroups on this machine: {why}")


class Traffic:
    """Predictions through the edge from a few threads, paced; errors while a service
    restarts are expected and counted."""

    def __init__(self, url: str, threads: int = 2, pause: float = 0.05) -> None:
        self.url = url
        self.pause = pause
        self.stop = threading.Event()
        self.ok = self.failed = 0
        self.body = heldout_samples(heldout_dir())[0].body
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self.stop.is_set():
                try:
                    response = client.post(
                        self.url + "/v1/predict",
                        content=self.body,
                        headers={"Content-Type": "image/png"},
                    )
                    if response.status_code == 200:
                        self.ok += 1
                    else:
                        self.failed += 1
                except httpx.HTTPError:
                    self.failed += 1
                self.stop.wait(self.pause)

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)


def query(prometheus: PrometheusProcess, expr: str) -> list[dict[str, Any]]:
    body = httpx.get(prometheus.url + "/api/v1/query", params={"query": expr}, timeout=5).json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def scalar(prometheus: PrometheusProcess, expr: str) -> float:
    result = query(prometheus, expr)
    assert result, f"no data for {expr}"
    return float(result[0]["value"][1])


def _wait(predicate, timeout: float, what: str, diagnose=lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{diagnose()}")


@contextlib.contextmanager
def limited(start_stack, limits: dict[str, Limits], env: dict[str, dict[str, str]]):
    """The three services with `limits`, supervised (back-off 0.2 s) and exported."""
    stack = start_stack.unstarted(env=env)
    said: list[str] = []
    runtime = ContainerRuntime(stack.services, limits=limits, backoff_base=0.2, say=said.append)
    runtime.prepare()
    assert runtime.driver is not None, runtime.notice
    assert runtime.scratch["classifier"].parent == Path("/dev/shm")
    try:
        stack.start(timeout=60)
        runtime.start(exporter_port=0)
        runtime.said = said  # type: ignore[attr-defined]
        yield stack, runtime
    finally:
        runtime.stop_supervising()
        stack.stop(timeout=10)
        made = [d for c in runtime.cgroups.values() for d in c.dirs]
        scratch = list(runtime.scratch.values())  # the cache fault's tmpfs, per process
        runtime.close()
        # Cgroups and tmpfs files go with the run, even after a kill (tmpfs pages would
        # otherwise stay in memory until reboot).
        assert not [d for d in made + scratch if d.exists()]


@pytest.mark.parametrize(
    ("kind", "fault", "limit"),
    # The classifier's RSS at rest is ~113 MiB: ~58 MiB anonymous plus ~55 MiB of shared
    # libraries (onnxruntime, numpy) whose file pages count in the process's RSS but are
    # charged to whichever cgroup read them first. So the `cache` case needs a limit well
    # above that RSS to show "RSS well under the limit"; the `leak` case does not.
    [("cache", "cache:infer:2Mi", 256 * MiB), ("leak", "leak:infer:1Mi", 128 * MiB)],
)
def test_a_memory_fault_ends_in_an_oom_kill_that_is_recorded_alerted_and_diagnosed(
    cgroups_here, start_stack, tmp_path: Path, kind: str, fault: str, limit: int
) -> None:
    _tool("prometheus")
    _tool("prometheus-alertmanager")
    started = time.monotonic()
    with limited(
        start_stack,
        {"classifier": Limits(memory_bytes=limit)},
        {"classifier": {"SERVESCOPE_FAULTS": fault}},
    ) as (stack, runtime):
        assert runtime.exporter is not None and runtime.supervisor is not None
        cgroup = runtime.cgroups["classifier"]
        prometheus_port = free_port()
        alerting = LocalAlerting(
            tmp_path / "alerting",
            prometheus_url=f"http://127.0.0.1:{prometheus_port}",
            alertmanager_port=free_port(),
            responder_port=free_port(),
            fast=True,
            responder_window="15s",
        )
        # The production rule file as it is: ServescopeContainerOOMKilled has no `for`, and
        # its 10-minute windows hold a 1-second scrape's samples from the start.
        prometheus = PrometheusProcess(
            prometheus_port,
            tmp_path / "prometheus",
            with_rule_files(
                prometheus_config(
                    stack.ports,
                    prometheus_port,
                    "1s",
                    alertmanager_port=alerting.alertmanager_port,
                    exporter_port=runtime.exporter.port,
                ),
                [str(RULES)],
            ),
        )

        def diagnose() -> str:
            parts = [f"supervisor: {runtime.said}"]  # type: ignore[attr-defined]
            for name, path in [
                ("classifier", stack.services["classifier"].log_path),
                ("responder", tmp_path / "alerting" / "responder.log"),
                ("prometheus", prometheus.log_path),
            ]:
                with contextlib.suppress(OSError):
                    parts.append(f"--- {name}\n" + "\n".join(path.read_text().splitlines()[-12:]))
            with contextlib.suppress(Exception):
                parts.append(httpx.get(prometheus.url + "/api/v1/alerts", timeout=2).text)
            return "\n".join(parts)

        peak_usage = 0
        try:
            alerting.start()
            prometheus.start()
            prometheus.wait_for_targets()
            responder = alerting.responder
            assert responder is not None
            # One paced client: memory climbs over several seconds, so the 1 s scrapes see it.
            with Traffic(stack.url, threads=1, pause=0.05):
                traffic_started = time.monotonic()

                def oom_killed() -> bool:
                    nonlocal peak_usage
                    peak_usage = max(peak_usage, cgroup.usage().memory_usage_bytes)
                    return runtime.supervisor.snapshot()["classifier"].last_reason == "OOMKilled"

                _wait(oom_killed, 60, "the classifier to be OOM killed", diagnose)
                oom_after = time.monotonic() - traffic_started

                def notes() -> list[dict]:
                    return [n for n in responder.incidents() if n["alertname"] == ALERT]

                (note,) = _wait(notes, 60, f"{ALERT} to reach the responder", diagnose)
                alerted_after = time.monotonic() - traffic_started

            status = runtime.supervisor.snapshot()["classifier"]
            assert status.last_exit_code == 137
            assert status.restarts >= 1
            assert runtime.supervisor.events[0] == ("classifier", "OOMKilled", 137)

            assert note["status"] == "firing"
            assert note["labels"]["container"] == "classifier"
            assert note["labels"]["namespace"] == "servescope"
            culprit = note["culprit"]
            assert culprit["service"] == "classifier", culprit
            assert culprit["step"] == "memory", culprit
            assert any("OOMKilled" in e for e in culprit["evidence"]), culprit
            markdown = (responder.incidents_path / f"{note['id']}.md").read_text()
            assert "classifier" in markdown and "memory" in markdown

            window = "[5m]"
            peak_rss = scalar(
                prometheus,
                f'max_over_time(process_resident_memory_bytes{{job="classifier"}}{window})',
            )
            cadvisor = 'container="classifier", image!=""'
            peak_container = scalar(
                prometheus, f"max_over_time(container_memory_usage_bytes{{{cadvisor}}}{window})"
            )
            peak_container_rss = scalar(
                prometheus, f"max_over_time(container_memory_rss{{{cadvisor}}}{window})"
            )
            peak_cache = scalar(
                prometheus, f"max_over_time(container_memory_cache{{{cadvisor}}}{window})"
            )
            cgroup_max = scalar(
                prometheus, f"max_over_time(container_memory_max_usage_bytes{{{cadvisor}}}{window})"
            )
            assert scalar(prometheus, f"container_spec_memory_limit_bytes{{{cadvisor}}}") == limit
            assert (
                scalar(
                    prometheus, f"max_over_time(container_oom_events_total{{{cadvisor}}}{window})"
                )
                >= 1
            )
            # The cgroup reached its limit (its own high-water mark, and the 1 s samples).
            assert cgroup_max >= 0.95 * limit
            assert peak_container >= 0.8 * limit
            if kind == "cache":
                # The quiet graph: the process's own RSS stays well under the limit; page
                # cache (tmpfs, unreclaimable) fills it.
                assert peak_rss < 0.65 * limit
                assert peak_cache >= 0.3 * limit
            else:
                # A leak: anonymous memory, the process's RSS, reaches the limit.
                assert peak_container_rss >= 0.8 * limit
                assert peak_rss >= 0.75 * limit
            print(
                f"{kind}: limit {limit / MiB:.0f} MiB; peak process RSS {peak_rss / MiB:.0f} MiB,"
                f" peak cgroup RSS {peak_container_rss / MiB:.0f} MiB, peak cache "
                f"{peak_cache / MiB:.0f} MiB, peak usage {peak_container / MiB:.0f} MiB "
                f"(sampled here {peak_usage / MiB:.0f}, cgroup max {cgroup_max / MiB:.0f}); "
                f"OOMKilled {oom_after:.1f} s after traffic began, incident note after "
                f"{alerted_after:.1f} s; restarts {status.restarts}; whole test "
                f"{time.monotonic() - started:.0f} s"
            )
        finally:
            prometheus.stop()
            alerting.stop()


def _cadvisor(runtime: ContainerRuntime, name: str, container: str) -> float:
    assert runtime.exporter is not None
    text = httpx.get(runtime.exporter.url + "/metrics/cadvisor", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + "{") and f'container="{container}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} for {container} not exported:\n{text}")


def test_a_cpu_limit_throttles_under_load(cgroups_here, start_stack) -> None:
    with limited(start_stack, {"preprocess": Limits(cpu_millicores=100)}, {}) as (stack, runtime):
        periods = _cadvisor(runtime, "container_cpu_cfs_periods_total", "preprocess")
        throttled = _cadvisor(runtime, "container_cpu_cfs_throttled_periods_total", "preprocess")
        with Traffic(stack.url, threads=4, pause=0):
            time.sleep(4)
        periods_delta = (
            _cadvisor(runtime, "container_cpu_cfs_periods_total", "preprocess") - periods
        )
        throttled_delta = (
            _cadvisor(runtime, "container_cpu_cfs_throttled_periods_total", "preprocess")
            - throttled
        )
        used = _cadvisor(runtime, "container_cpu_usage_seconds_total", "preprocess")
    assert periods_delta >= 20, periods_delta
    assert throttled_delta >= 0.5 * periods_delta, (throttled_delta, periods_delta)
    print(
        f"preprocess at 100m under load: {throttled_delta:.0f} of {periods_delta:.0f} periods "
        f"throttled; {used:.2f} s CPU in all"
    )


def test_without_cgroup_access_up_says_so_once_and_runs_unlimited(tmp_path: Path) -> None:
    """`up --limit` with the cgroup root pointed at an unwritable directory."""
    root = tmp_path / "cgroup"
    root.mkdir()
    root.chmod(0o555)
    ports = [free_port() for _ in range(4)]
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("SERVESCOPE_")}
    env["SERVESCOPE_CGROUP_ROOT"] = str(root)
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "servescope.cli",
            "up",
            f"--run-dir={tmp_path / 'run'}",
            f"--port-preprocess={ports[0]}",
            f"--port-classifier={ports[1]}",
            f"--port-postprocess={ports[2]}",
            f"--port-exporter={ports[3]}",
            "--no-prometheus",
            "--no-alertmanager",
            "--no-grafana",
            "--no-jaeger",
            "--rate=0",
            "--limit=classifier=memory:64Mi,cpu:500m",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert up.stdout is not None
        for line in up.stdout:
            lines.append(line.rstrip())
            if line.startswith("Ctrl-C stops everything"):
                break
        predicted = httpx.post(
            f"http://127.0.0.1:{ports[0]}/v1/predict",
            content=heldout_samples(heldout_dir())[0].body,
            headers={"Content-Type": "image/png"},
            timeout=10,
        )
        ksm = httpx.get(f"http://127.0.0.1:{ports[3]}/metrics/kube-state-metrics", timeout=5).text
        cadvisor = httpx.get(f"http://127.0.0.1:{ports[3]}/metrics/cadvisor", timeout=5).text
    finally:
        up.terminate()
        out, _ = up.communicate(timeout=30)
        root.chmod(0o755)
    lines += out.splitlines()
    notices = [line for line in lines if "resource limits" in line]
    assert len(notices) == 1, "\n".join(lines)
    assert notices[0].startswith("note: resource limits need writable memory and cpu cgroups")
    assert notices[0].endswith("running without limits")
    assert not any(line.strip().startswith("resources") for line in lines)
    assert predicted.status_code == 200, predicted.text
    # The supervisor still runs and kube-state-metrics series exist; no cgroup, no cAdvisor.
    assert 'kube_pod_container_status_restarts_total{namespace="servescope"' in ksm
    assert "resource=" not in ksm
    assert 'container="classifier"' not in cadvisor
    assert up.returncode == 0, "\n".join(lines)
