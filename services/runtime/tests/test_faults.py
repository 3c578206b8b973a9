"""The fault registry: switching kinds on and off, what each does, the gauge and the counter,
the admin API's answers (and its 4xx that list the valid specs), and the start from the
environment."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from servescope.runtime import faults as faults_module
from servescope.runtime.errors import ServiceError
from servescope.runtime.faults import CACHE_FILE_PREFIX, Faults
from servescope.runtime.health import Health
from servescope.runtime.instrument import instrument_app
from servescope.runtime.settings import CommonSettings
from servescope.telemetry.faultspec import FaultSpecError, parse
from servescope.telemetry.metrics import ServiceMetrics

STEPS = ("decode", "resize", "normalise")
TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MiB = 1024 * 1024


def value(metrics: ServiceMetrics, name: str, **labels: str) -> float:
    got = metrics.registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Faults, ServiceMetrics, Health]:
    metrics = ServiceMetrics("preprocess")
    health = Health("preprocess", "test")
    return Faults(STEPS, metrics, health=health, cache_dir=tmp_path), metrics, health


def test_off_by_default_with_every_series_at_zero(setup) -> None:
    faults, metrics, health = setup
    assert faults.specs() == []
    assert (
        value(metrics, "servescope_fault_value", kind="delay", service="preprocess", step="resize")
        == 0
    )
    assert (
        value(metrics, "servescope_fault_value", kind="crash", service="preprocess", step="") == 0
    )
    # 5 step kinds x 3 steps + 3 service-wide kinds + leak and cache at once: bounded.
    samples = [
        s
        for family in metrics.registry.collect()
        if family.name == "servescope_fault_value"
        for s in family.samples
    ]
    assert len(samples) == 5 * 3 + 3 + 2
    assert health.ready
    asyncio.run(faults.inject("resize"))  # a no-op


def test_delay_and_cpu_slow_the_step_and_count(setup) -> None:
    faults, metrics, _ = setup
    faults.enable(parse("delay:resize:0.05", STEPS))
    faults.enable(parse("cpu:normalise:0.05", STEPS))
    assert faults.delays == {"resize": 0.05}
    started = time.perf_counter()
    asyncio.run(faults.inject("resize"))
    assert time.perf_counter() - started >= 0.05
    cpu = time.process_time()
    asyncio.run(faults.inject("normalise"))
    assert time.process_time() - cpu >= 0.045
    asyncio.run(faults.inject("decode"))  # other steps untouched
    assert value(metrics, "servescope_fault_injections_total", kind="delay", step="resize") == 1
    assert value(metrics, "servescope_fault_injections_total", kind="cpu", step="normalise") == 1
    assert (
        value(metrics, "servescope_fault_value", kind="cpu", service="preprocess", step="normalise")
        == 0.05
    )
    faults.disable()
    assert (
        value(metrics, "servescope_fault_value", kind="delay", service="preprocess", step="resize")
        == 0
    )


def test_error_fails_its_share_with_a_500_and_the_steps_stage(setup) -> None:
    faults, metrics, _ = setup
    faults.enable(parse("error:resize", STEPS))
    with pytest.raises(ServiceError) as failed:
        asyncio.run(faults.inject("resize"))
    assert (failed.value.status, failed.value.kind, failed.value.stage) == (
        500,
        "fault_injected",
        "preprocess",
    )
    faults.enable(parse("error:resize:25%", STEPS))
    outcomes = []
    for _ in range(400):
        try:
            asyncio.run(faults.inject("resize"))
            outcomes.append(0)
        except ServiceError:
            outcomes.append(1)
    assert 50 < sum(outcomes) < 150
    assert value(
        metrics, "servescope_fault_injections_total", kind="error", step="resize"
    ) == 1 + sum(outcomes)


def test_leak_keeps_bytes_until_cleared_within_the_cap(tmp_path: Path) -> None:
    faults = Faults(STEPS, None, cache_dir=tmp_path, max_bytes=3 * MiB)
    faults.enable(parse("leak:decode:1Mi", STEPS))
    for _ in range(5):
        asyncio.run(faults.inject("decode"))
    assert faults._leaked_bytes == 3 * MiB  # stopped at the cap
    faults.enable(parse("leak:512Ki", STEPS))  # at once: already at the cap
    faults.disable("leak", "decode")
    assert faults._leaked_bytes == 3 * MiB  # leak:512Ki (at once) is still on
    faults.disable("leak")
    assert faults._leaked_bytes == 0 and faults._leaked == []


def test_cache_appends_to_a_file_and_clearing_removes_it(setup, tmp_path: Path) -> None:
    faults, _, _ = setup
    faults.enable(parse("cache:decode:256Ki", STEPS))
    for _ in range(4):
        asyncio.run(faults.inject("decode"))
    path = faults.cache_path
    assert path.parent == tmp_path
    assert path.name == f"{CACHE_FILE_PREFIX}preprocess-{os.getpid()}"
    assert path.stat().st_size == MiB
    faults.enable(parse("cache:2Mi", STEPS))  # at once
    assert path.stat().st_size == 3 * MiB
    faults.disable("cache", "decode")
    assert path.exists()  # cache:2Mi still on
    faults.disable()
    assert not path.exists()


def test_a_restart_removes_the_cache_files_of_dead_predecessors(tmp_path: Path) -> None:
    dead = tmp_path / f"{CACHE_FILE_PREFIX}preprocess-999999999"
    dead.write_bytes(b"x")
    alive = tmp_path / f"{CACHE_FILE_PREFIX}preprocess-1"  # pid 1 is alive
    alive.write_bytes(b"x")
    other = tmp_path / f"{CACHE_FILE_PREFIX}classifier-999999999"
    other.write_bytes(b"x")
    Faults(STEPS, ServiceMetrics("preprocess"), cache_dir=tmp_path)
    assert not dead.exists()
    assert alive.exists() and other.exists()


def test_unready_turns_readiness_only(setup) -> None:
    faults, metrics, health = setup
    faults.enable(parse("unready", STEPS))
    assert not health.ready
    assert health.not_ready_reasons() == ["fault_unready"]
    assert (
        value(metrics, "servescope_fault_value", kind="unready", service="preprocess", step="") == 1
    )
    faults.disable("unready")
    assert health.ready


def test_slow_start_holds_readiness_and_only_at_start(setup) -> None:
    faults, _, health = setup
    with pytest.raises(FaultSpecError, match="at start only"):
        faults.enable(parse("slow_start:1", STEPS))
    faults.enable(parse("slow_start:0.2", STEPS), at_start=True)
    assert not health.ready
    assert health.not_ready_reasons() == ["slow_start"]
    time.sleep(0.25)
    assert health.ready
    faults.enable(parse("slow_start:30", STEPS), at_start=True)
    faults.disable()  # clearing restores it at once
    assert health.ready


def test_crash_exits_non_zero_after_n_requests(setup, monkeypatch) -> None:
    faults, _, _ = setup
    exits: list[int] = []
    monkeypatch.setattr(faults_module.os, "_exit", exits.append)
    faults.enable(parse("crash:3", STEPS))

    async def serve(n: int) -> None:
        for _ in range(n):
            faults.request_done()
        await asyncio.sleep(0.1)

    asyncio.run(serve(2))
    assert exits == []
    asyncio.run(serve(1))
    assert exits == [1]


# --- the admin API and the start -----------------------------------------------------------


def app_with(tmp_path: Path, **settings: object) -> tuple[TestClient, FastAPI]:
    app = FastAPI()
    metrics = ServiceMetrics("preprocess")
    health = Health("preprocess", "test")
    config = CommonSettings(admin_token=TOKEN, fault_cache_dir=tmp_path, **settings)
    faults = instrument_app(app, metrics, health, config, fault_steps=STEPS)

    @app.post("/v1/predict")
    async def predict() -> dict[str, str]:
        await faults.inject("resize")
        return {"ok": "yes"}

    return TestClient(app), app


def test_the_admin_token_from_a_mounted_file_guards_the_admin_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in a pod: the token is a file in the secrets directory (the chart's projected
    Secret), which wins over an environment variable of the same name."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "SERVESCOPE_ADMIN_TOKEN").write_text(TOKEN + "\n")
    monkeypatch.setenv("SERVESCOPE_ADMIN_TOKEN", "from-env")
    config = CommonSettings(_secrets_dir=secrets, fault_cache_dir=tmp_path)
    app = FastAPI()
    instrument_app(app, ServiceMetrics("preprocess"), Health("preprocess", "t"), config, STEPS)
    client = TestClient(app)
    assert client.get("/admin/faults").status_code == 401
    for wrong in ("Bearer from-env", "Bearer wrong", TOKEN):
        refused = client.get("/admin/faults", headers={"Authorization": wrong})
        assert refused.status_code == 401, wrong
    assert client.get("/admin/faults", headers=AUTH).status_code == 200


def test_admin_switches_every_runtime_kind_and_clears(tmp_path: Path) -> None:
    client, _ = app_with(tmp_path)
    assert client.get("/admin/faults").status_code == 401
    listed = client.get("/admin/faults", headers=AUTH).json()
    assert listed["steps"] == list(STEPS)
    assert set(listed["kinds"]) >= {"delay", "error", "cpu", "leak", "cache", "crash", "unready"}
    on = client.put(
        "/admin/faults", headers=AUTH, json={"kind": "error", "step": "resize", "value": 1}
    )
    assert on.status_code == 200, on.text
    assert on.json()["faults"] == [
        {"kind": "error", "step": "resize", "value": 1.0, "spec": "error:resize:1"}
    ]
    failed = client.post("/v1/predict")
    assert failed.status_code == 500
    assert failed.json() == {
        "error": "injected error in step resize",
        "kind": "fault_injected",
        "stage": "preprocess",
    }
    client.put("/admin/faults", headers=AUTH, json={"spec": "unready"})
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200
    cleared = client.delete("/admin/faults", headers=AUTH)
    assert cleared.json()["faults"] == []
    assert client.post("/v1/predict").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_admin_keeps_the_first_delay_api(tmp_path: Path) -> None:
    client, _ = app_with(tmp_path)
    on = client.put("/admin/faults/resize", headers=AUTH, json={"delay_seconds": 0.2})
    assert on.json()["delays"] == {"resize": 0.2}
    off = client.put("/admin/faults/resize", headers=AUTH, json={"delay_seconds": 0})
    assert off.json()["delays"] == {}
    client.put("/admin/faults/resize", headers=AUTH, json={"kind": "cpu", "value": 0.01})
    client.put("/admin/faults/resize", headers=AUTH, json={"delay_seconds": 0.1})
    assert len(client.get("/admin/faults", headers=AUTH).json()["faults"]) == 2
    client.delete("/admin/faults/resize", headers=AUTH, params={"kind": "cpu"})
    assert [f["kind"] for f in client.get("/admin/faults", headers=AUTH).json()["faults"]] == [
        "delay"
    ]
    client.delete("/admin/faults/resize", headers=AUTH)
    assert client.get("/admin/faults", headers=AUTH).json()["faults"] == []


@pytest.mark.parametrize(
    ("path", "body", "status", "says"),
    [
        ("/admin/faults", {"kind": "teleport"}, 400, "valid specs: delay:STEP:SECONDS"),
        ("/admin/faults", {"kind": "delay", "step": "warp", "value": 1}, 400, "decode, resize"),
        ("/admin/faults", {"kind": "delay", "step": "resize", "value": 99}, 400, "at most 30"),
        ("/admin/faults", {"kind": "crash", "step": "resize"}, 400, "takes no step"),
        ("/admin/faults", {"spec": "slow_start:5"}, 400, "SERVESCOPE_FAULTS"),
        ("/admin/faults", {"spec": "leak:resize:lots"}, 400, "suffixes Ki, Mi, Gi"),
        ("/admin/faults", {}, 400, '"kind": KIND'),
        ("/admin/faults/warp", {"delay_seconds": 1}, 404, "resize"),
        ("/admin/faults/resize", {"delay_seconds": 99}, 400, "at most 30"),
    ],
)
def test_admin_refuses_bad_specs_listing_the_valid_ones(tmp_path, path, body, status, says) -> None:
    client, _ = app_with(tmp_path)
    answer = client.put(path, headers=AUTH, json=body)
    assert answer.status_code == status
    assert answer.json()["kind"] == "invalid_fault"
    assert says in answer.json()["error"]
    # An operator's typo is not a rejected input.
    assert "servescope_rejected_inputs_total{" not in client.get("/metrics").text


def test_faults_from_the_environment_and_the_older_pair(tmp_path: Path) -> None:
    client, _ = app_with(
        tmp_path,
        faults="error:resize:1,unready",
        fault_stage="decode",
        fault_delay_seconds=0.01,
    )
    specs = sorted(f["spec"] for f in client.get("/admin/faults", headers=AUTH).json()["faults"])
    assert specs == ["delay:decode:0.01", "error:resize:1", "unready"]
    assert client.get("/readyz").status_code == 503
    with pytest.raises(FaultSpecError, match="valid specs"):
        app_with(tmp_path, faults="boom:resize")


def test_the_crash_counter_is_on_the_request_path_only_where_a_crash_can_be_on(
    tmp_path: Path,
) -> None:
    def layers(**settings: object) -> set[str]:
        app = FastAPI()
        config = CommonSettings(fault_cache_dir=tmp_path, **settings)
        instrument_app(
            app, ServiceMetrics("preprocess"), Health("p", "t"), config, fault_steps=STEPS
        )
        return {m.cls.__name__ for m in app.user_middleware}  # type: ignore[attr-defined]

    assert "CountRequests" not in layers()  # no token, no crash: every request skips it
    assert "CountRequests" in layers(admin_token=TOKEN)  # switchable at run time
    assert "CountRequests" in layers(faults="crash:5")  # on from the start
