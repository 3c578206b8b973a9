"""Every fault kind against real service processes: its effect in the service's own telemetry
(status codes and counters, resident memory, CPU time, shared memory and the cache file,
the exit code, /readyz versus /healthz, time to ready), and normal service after clearing.

Sizes stay small (tens of MiB) so the tests run beside others on a 2-core machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from servescope.cli.local.services import SERVICES, LocalStack
from servescope.cli.paths import heldout_dir
from servescope.loadgen.inputs import heldout_samples
from servescope.runtime.faults import CACHE_FILE_PREFIX, CRASH_EXIT_CODE

pytestmark = pytest.mark.slow
DIGIT = heldout_samples(heldout_dir())[0].body
TOKEN = "fault-kinds-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MiB = 1024 * 1024
INFER_ROUTE = "/v2/models/{name}/infer"


# --- helpers -----------------------------------------------------------------------------


def predict(url: str) -> httpx.Response:
    return httpx.post(
        url + "/v1/predict", content=DIGIT, headers={"Content-Type": "image/png"}, timeout=30
    )


def predict_ok(url: str, times: int = 1) -> None:
    for _ in range(times):
        answer = predict(url)
        assert answer.status_code == 200, answer.text


def sample(url: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when none)."""
    total = 0.0
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def admin(method: str, url: str, path: str = "/admin/faults", **kwargs) -> httpx.Response:
    return httpx.request(method, url + path, headers=AUTH, timeout=10, **kwargs)


def put(url: str, spec: dict) -> dict:
    answer = admin("PUT", url, json=spec)
    assert answer.status_code == 200, answer.text
    return answer.json()


def shmem_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Shmem:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no Shmem in /proc/meminfo")


def cache_files(pid: int) -> list[Path]:
    found = []
    for folder in {Path("/dev/shm"), Path(os.environ.get("TMPDIR", "/tmp"))}:
        if folder.is_dir():
            found += folder.glob(f"{CACHE_FILE_PREFIX}*-{pid}")
    return found


@pytest.fixture(scope="module")
def stack(module_stack_starter) -> LocalStack:
    """One stack with the admin API for the kinds switched at run time."""
    return module_stack_starter(env={"*": {"SERVESCOPE_ADMIN_TOKEN": TOKEN}})


@pytest.fixture
def live(stack: LocalStack) -> Iterator[LocalStack]:
    """The shared stack, with every fault cleared after each test."""
    yield stack
    for name in SERVICES:
        service = stack.services[name]
        if service.running():
            admin("DELETE", service.url)


# --- cache and leak (the memory faults) -------------------------------------------------


def test_cache_fills_shared_memory_not_resident_memory_and_clearing_frees_it(live) -> None:
    classifier = live.services["classifier"]
    pid = classifier.pid
    assert pid is not None
    predict_ok(live.url)
    rss_before = sample(classifier.url, "process_resident_memory_bytes")
    shmem_before = shmem_bytes()

    state = put(classifier.url, {"kind": "cache", "step": "infer", "value": "4Mi"})
    assert state["faults"] == [
        {"kind": "cache", "step": "infer", "value": 4 * MiB, "spec": "cache:infer:4194304"}
    ]
    assert sample(classifier.url, "servescope_fault_value", kind="cache", step="infer") == 4 * MiB
    predict_ok(live.url, times=6)
    [path] = cache_files(pid)
    assert path.stat().st_size == 24 * MiB
    assert path.stat().st_blocks * 512 >= 24 * MiB  # real pages, not a sparse file
    if str(path).startswith("/dev/shm"):
        assert shmem_bytes() - shmem_before >= 16 * MiB
    rss_after = sample(classifier.url, "process_resident_memory_bytes")
    assert rss_after - rss_before < 8 * MiB, (rss_before, rss_after)
    assert (
        sample(classifier.url, "servescope_fault_injections_total", kind="cache", step="infer") == 6
    )

    # At once: no step, the whole size when switched on.
    put(classifier.url, {"spec": "cache:8Mi"})
    assert path.stat().st_size == 32 * MiB

    cleared = admin("DELETE", classifier.url)
    assert cleared.json()["faults"] == []
    assert not path.exists()
    assert sample(classifier.url, "servescope_fault_value", kind="cache", step="infer") == 0
    predict_ok(live.url)
    assert cache_files(pid) == []


def test_leak_grows_resident_memory_and_clearing_releases_it(live) -> None:
    classifier = live.services["classifier"]
    predict_ok(live.url)
    rss_before = sample(classifier.url, "process_resident_memory_bytes")
    put(classifier.url, {"kind": "leak", "step": "infer", "value": 4 * MiB})
    assert sample(classifier.url, "servescope_fault_value", kind="leak", step="infer") == 4 * MiB
    predict_ok(live.url, times=6)
    rss_leaking = sample(classifier.url, "process_resident_memory_bytes")
    assert rss_leaking - rss_before >= 20 * MiB, (rss_before, rss_leaking)
    assert cache_files(classifier.pid) == []  # heap, not a file

    admin("DELETE", classifier.url, params={"kind": "leak"})
    rss_cleared = sample(classifier.url, "process_resident_memory_bytes")
    assert rss_leaking - rss_cleared >= 12 * MiB, (rss_leaking, rss_cleared)
    predict_ok(live.url, times=2)
    assert sample(classifier.url, "process_resident_memory_bytes") - rss_cleared < 4 * MiB


def test_cache_and_leak_from_the_environment(start_stack) -> None:
    stack = start_stack(env={"classifier": {"SERVESCOPE_FAULTS": "cache:infer:1Mi,leak:infer:2Mi"}})
    classifier = stack.services["classifier"]
    rss_before = sample(classifier.url, "process_resident_memory_bytes")
    predict_ok(stack.url, times=5)
    [path] = cache_files(classifier.pid)
    assert path.stat().st_size == 5 * MiB
    assert sample(classifier.url, "process_resident_memory_bytes") - rss_before >= 8 * MiB
    # No token: no admin API, so the faults stay until the process ends.
    assert httpx.get(classifier.url + "/admin/faults").status_code == 404


# --- delay, error, cpu (the step kinds that slow or fail requests) ------------------------


def test_delay_slows_the_step_and_shows_in_the_stage_histogram(live) -> None:
    preprocess = live.url
    put(preprocess, {"spec": "delay:resize:0.3"})
    started = time.perf_counter()
    predict_ok(preprocess)
    assert time.perf_counter() - started >= 0.3
    slow = sample(
        preprocess, "servescope_stage_duration_seconds_bucket", stage="preprocess", le="0.3"
    )
    total = sample(preprocess, "servescope_stage_duration_seconds_count", stage="preprocess")
    assert total - slow >= 1  # at least one preprocess stage above 0.3 s
    admin("DELETE", preprocess, "/admin/faults/resize")
    started = time.perf_counter()
    predict_ok(preprocess)
    assert time.perf_counter() - started < 0.25


def test_error_fails_requests_with_500_and_the_edge_reports_the_downstream(live) -> None:
    classifier = live.services["classifier"]
    route = {"http_route": INFER_ROUTE, "http_response_status_code": "500"}
    before = sample(classifier.url, "http_server_request_duration_seconds_count", **route)
    put(classifier.url, {"kind": "error", "step": "infer", "value": 1.0})
    answer = predict(live.url)
    assert answer.status_code == 502
    assert answer.json()["kind"] == "classifier_error"
    assert "injected error in step infer" in answer.json()["error"]
    assert (
        sample(classifier.url, "http_server_request_duration_seconds_count", **route) == before + 1
    )
    assert (
        sample(classifier.url, "servescope_fault_injections_total", kind="error", step="infer") >= 1
    )
    assert (
        sample(
            live.url,
            "http_client_request_duration_seconds_count",
            peer_service="classifier",
            outcome="error",
        )
        >= 1
    )

    # A share: at the edge's own step, with the edge's own status and kind.
    admin("DELETE", classifier.url)
    put(live.url, {"spec": "error:normalise:50%"})
    statuses = [predict(live.url) for _ in range(30)]
    failed = [r for r in statuses if r.status_code == 500]
    assert 3 <= len(failed) <= 27, [r.status_code for r in statuses]
    assert {r.json()["kind"] for r in failed} == {"fault_injected"}
    assert {r.json()["stage"] for r in failed} == {"preprocess"}
    assert all(r.status_code in (200, 500) for r in statuses)

    admin("DELETE", live.url)
    predict_ok(live.url, times=5)


def test_cpu_burns_cpu_time_per_request(live) -> None:
    postprocess = live.services["postprocess"]
    predict_ok(live.url)
    cpu_before = sample(postprocess.url, "process_cpu_seconds_total")
    put(postprocess.url, {"kind": "cpu", "step": "softmax_topk", "value": 0.2})
    predict_ok(live.url, times=3)
    cpu_burning = sample(postprocess.url, "process_cpu_seconds_total")
    assert cpu_burning - cpu_before >= 0.55, (cpu_before, cpu_burning)
    admin("DELETE", postprocess.url)
    predict_ok(live.url, times=3)
    assert sample(postprocess.url, "process_cpu_seconds_total") - cpu_burning < 0.3


# --- unready, crash, slow_start (service-wide) ------------------------------------------


def test_unready_fails_readiness_only_and_clearing_restores_it(live) -> None:
    classifier = live.services["classifier"]
    put(classifier.url, {"spec": "unready"})
    ready = httpx.get(classifier.url + "/readyz")
    assert ready.status_code == 503
    assert ready.json()["waiting_for"] == ["fault_unready"]
    assert httpx.get(classifier.url + "/v2/health/ready").status_code == 503
    assert httpx.get(classifier.url + "/healthz").status_code == 200
    assert httpx.get(classifier.url + "/v2/health/live").status_code == 200
    assert sample(classifier.url, "servescope_ready") == 0
    assert sample(classifier.url, "servescope_fault_value", kind="unready", step="") == 1
    admin("DELETE", classifier.url, params={"kind": "unready"})
    assert httpx.get(classifier.url + "/readyz").status_code == 200
    assert sample(classifier.url, "servescope_ready") == 1
    predict_ok(live.url)


def test_crash_exits_non_zero_after_n_requests_and_a_restart_serves_again(start_stack) -> None:
    stack = start_stack(
        env={
            "*": {"SERVESCOPE_ADMIN_TOKEN": TOKEN},
            "postprocess": {"SERVESCOPE_FAULTS": "crash:3"},
        }
    )
    postprocess = stack.services["postprocess"]
    assert sample(postprocess.url, "servescope_fault_value", kind="crash", step="") == 3
    # Probes and scrapes do not count.
    for _ in range(5):
        assert httpx.get(postprocess.url + "/readyz").status_code == 200
    predict_ok(stack.url, times=3)  # the third is answered, then the process exits
    deadline = time.monotonic() + 10
    while postprocess.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not postprocess.running()
    assert postprocess.exit_code() == CRASH_EXIT_CODE
    assert '"event":"fault_crash"' in postprocess.log_path.read_text()
    failed = predict(stack.url)
    assert failed.status_code == 503
    assert failed.json()["kind"] == "postprocess_unavailable"

    # Restarted (what a kubelet or local mode's supervisor does), it serves; the fault from
    # the environment is on again, so clear it through the admin API this time.
    postprocess.launch()
    stack.wait_ready(30, ("postprocess",))
    admin("DELETE", postprocess.url)
    predict_ok(stack.url, times=5)
    assert postprocess.running()

    # At run time too, counting from when it is switched on.
    put(postprocess.url, {"spec": "crash:1"})
    predict_ok(stack.url)
    deadline = time.monotonic() + 10
    while postprocess.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert postprocess.exit_code() == CRASH_EXIT_CODE


def test_slow_start_holds_readiness_not_liveness(start_stack) -> None:
    delay = 3.0
    stack = start_stack.unstarted(env={"classifier": {"SERVESCOPE_FAULTS": f"slow_start:{delay}"}})
    classifier = stack.services["classifier"]
    launched = time.monotonic()
    classifier.launch()
    live_at = ready_at = None
    reasons: set[str] = set()
    while time.monotonic() - launched < 30 and ready_at is None:
        assert classifier.running(), classifier.log_tail()
        try:
            if (
                live_at is None
                and httpx.get(classifier.url + "/healthz", timeout=1).status_code == 200
            ):
                live_at = time.monotonic()
            ready = httpx.get(classifier.url + "/readyz", timeout=1)
        except httpx.TransportError:
            time.sleep(0.05)
            continue
        if ready.status_code == 200:
            ready_at = time.monotonic()
        else:
            reasons.update(ready.json()["waiting_for"])
            time.sleep(0.05)
    assert live_at is not None and ready_at is not None
    assert ready_at - launched >= delay
    assert ready_at - live_at >= delay - 1.5  # alive long before ready: the startup probe's gap
    assert {"slow_start", "model_loaded"} <= reasons  # the model itself arrives late too
    assert sample(classifier.url, "servescope_fault_value", kind="slow_start", step="") == delay

    # Without the fault, the same process starts ready at once (the baseline).
    baseline = start_stack(names=("classifier",))
    assert baseline.services["classifier"].running()


def test_slow_start_is_refused_at_run_time(live) -> None:
    answer = admin("PUT", live.url, json={"spec": "slow_start:5"})
    assert answer.status_code == 400
    assert "SERVESCOPE_FAULTS" in answer.json()["error"]


def test_bad_specs_get_400_listing_the_valid_ones_and_a_bad_env_stops_the_start(
    live, start_stack
) -> None:
    answer = admin("PUT", live.url, json={"kind": "meltdown", "step": "resize"})
    assert answer.status_code == 400
    assert "valid specs: delay:STEP:SECONDS" in answer.json()["error"]
    assert "decode, resize, normalise" in answer.json()["error"]
    from servescope.cli.local.services import LocalStackError

    with pytest.raises(LocalStackError, match="exited during startup") as failed:
        start_stack(
            env={"postprocess": {"SERVESCOPE_FAULTS": "delay:warp:1"}}, names=("postprocess",)
        )
    assert "softmax_topk" in str(failed.value)


# --- the CLI -----------------------------------------------------------------------------


def servescope_fault(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN)
    return subprocess.run(
        [sys.executable, "-m", "servescope.cli", "fault", *args, "--token-file", str(token_file)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_cli_switches_kinds_keeps_the_older_form_and_clears(live, tmp_path) -> None:
    classifier = live.services["classifier"]
    port = str(classifier.port)
    on = servescope_fault(tmp_path, "classifier", "error", "infer", "1", "--port", port)
    assert on.returncode == 0, on.stdout + on.stderr
    assert "classifier faults now: error:infer:1" in on.stdout
    assert predict(live.url).status_code == 502
    older = servescope_fault(tmp_path, "classifier", "infer", "0.2", "--port", port)
    assert "delay:infer:0.2" in older.stdout
    off = servescope_fault(tmp_path, "classifier", "infer", "0", "--port", port)
    assert "delay" not in off.stdout and "error:infer:1" in off.stdout
    bad = servescope_fault(tmp_path, "classifier", "meltdown", "--port", port)
    assert bad.returncode == 2
    assert "valid specs: delay:STEP:SECONDS" in bad.stdout and "infer" in bad.stdout
    start_only = servescope_fault(tmp_path, "classifier", "slow_start", "20", "--port", port)
    assert start_only.returncode == 2
    assert "up --fault classifier:slow_start:20" in start_only.stdout
    cleared = servescope_fault(tmp_path, "classifier", "--clear", "--port", port)
    assert cleared.returncode == 0
    assert "classifier faults now: none" in cleared.stdout
    predict_ok(live.url)
