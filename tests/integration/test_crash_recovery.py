"""`kill -9` of each service under load: callers get fast answers (503 from the edge, or a
refused connection when the edge itself is gone), local mode's supervisor restarts the
process with restartPolicy Always (the first restart at once, as the kubelet's), the restart
is counted, and traffic recovers with nobody's help. The time to recovery is measured."""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from servescope.cli.local.containers import ContainerRuntime
from servescope.cli.local.services import SERVICES, LocalStack
from servescope.cli.paths import heldout_dir
from servescope.loadgen.inputs import heldout_samples
from servescope.telemetry.pipeline import PIPELINE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

# A request that waits on a dead downstream must fail fast, not hang until its timeout.
FAST_FAILURE_SECONDS = 1.0
RECOVERY_GOAL_SECONDS = 15.0
EDGE = PIPELINE.services[0].name


def test_kill_9_of_each_service_is_restarted_counted_and_recovered(start_stack) -> None:
    stack: LocalStack = start_stack()
    runtime = ContainerRuntime(stack.services, supervise=True, say=lambda _: None)
    runtime.start(exporter_port=None)
    digit = heldout_samples(heldout_dir())[0]
    recovery: dict[str, float] = {}
    try:
        with httpx.Client(base_url=stack.url, timeout=10) as client:

            def predict() -> tuple[int | str, float]:
                started = time.monotonic()
                try:
                    status: int | str = client.post(
                        "/v1/predict", content=digit.body, headers={"content-type": "image/png"}
                    ).status_code
                except httpx.TransportError as exc:
                    status = type(exc).__name__
                return status, time.monotonic() - started

            for name in SERVICES:
                assert predict()[0] == 200
                service = stack.services[name]
                assert service.process is not None
                killed_at = time.monotonic()
                service.process.send_signal(signal.SIGKILL)
                failures: list[tuple[int | str, float]] = []
                while True:
                    status, took = predict()
                    if status == 200:
                        break
                    failures.append((status, took))
                    assert time.monotonic() - killed_at < RECOVERY_GOAL_SECONDS, (
                        f"{name} not recovered in {RECOVERY_GOAL_SECONDS} s: {failures[-3:]}"
                    )
                    time.sleep(0.05)
                recovery[name] = time.monotonic() - killed_at
                assert failures, f"no request saw {name} down: the kill did not take"
                slow = [f for f in failures if f[1] > FAST_FAILURE_SECONDS]
                assert not slow, f"{name} down: callers waited {slow[:3]}"
                # The edge gone: a refused connection, or a reset on the kept-alive one.
                expected = {"ConnectError", "ReadError"} if name == EDGE else {503}
                assert {status for status, _ in failures} <= expected, failures[:5]
                status_now = runtime.supervisor.snapshot()[name] if runtime.supervisor else None
                assert status_now is not None and status_now.restarts == 1
                assert status_now.last_reason == "Error"
                assert status_now.last_exit_code == 137  # 128 + SIGKILL, as the kubelet says
    finally:
        runtime.stop_supervising()
        runtime.close()
    print("time to recovery after kill -9:", {k: round(v, 1) for k, v in recovery.items()})
