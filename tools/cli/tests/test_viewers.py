"""Grafana and Jaeger in local mode (servescope.cli.local.viewers).

Neither can be installed on the project's machines, so these tests put a stand-in binary
named like the real one on PATH: a small Python script that records its command line and
environment, waits a moment (so the readiness wait really waits), then serves the health URL
the real binary would serve (Grafana's /api/health on GF_SERVER_HTTP_PORT, Jaeger 1.x's
admin port /, Jaeger 2.x's health-check /status from its config file). What is proved is
the exact command `servescope up` runs, the files and environment it prepares, the
readiness wait, the fallback when a binary dies, and the one-line note when none is there.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from servescope.cli.local.process import free_port, http_get
from servescope.cli.local.session import LocalSession
from servescope.cli.local.viewers import (
    GrafanaProcess,
    JaegerProcess,
    LocalViewers,
    missing_note,
)
from servescope.cli.paths import repo_root

FAKE = textwrap.dedent(
    """\
    #!{python}
    # A stand-in for {name}: records how it was run, then serves its health URL.
    import http.server, json, os, sys, time, yaml
    record = {{"argv": sys.argv, "env": {{k: v for k, v in os.environ.items()
                                         if k.startswith(("GF_", "SERVESCOPE_DASHBOARDS"))}}}}
    with open(os.environ["FAKE_RECORD_DIR"] + "/{name}.json", "w") as f:
        json.dump(record, f)
    if os.environ.get("FAKE_FAIL"):
        sys.exit(3)
    args = dict(a.split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    name = "{name}"
    if name.startswith("grafana"):
        port, path = int(os.environ["GF_SERVER_HTTP_PORT"]), "/api/health"
    elif "--config" in args:
        config = yaml.safe_load(open(args["--config"]))
        endpoint = config["extensions"]["healthcheckv2"]["http"]["endpoint"]
        port, path = int(endpoint.rsplit(":", 1)[1]), "/status"
    else:
        port, path = int(args["--admin.http.host-port"].rsplit(":", 1)[1]), "/"
    time.sleep(0.5)
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == path else 404)
            self.end_headers()
            self.wfile.write(b'{{"database": "ok"}}')
        def log_message(self, *a):
            pass
    http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


def _fake(bin_dir: Path, name: str) -> Path:
    path = bin_dir / name
    path.write_text(FAKE.format(python=sys.executable, name=name))
    path.chmod(0o755)
    return path


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH holding only the stand-ins (and nothing else named grafana or jaeger)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "record"
    record.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("FAKE_RECORD_DIR", str(record))
    return bin_dir


def _recorded(bin_dir: Path, name: str) -> dict:
    return json.loads((bin_dir.parent / "record" / f"{name}.json").read_text())


def _viewers(tmp_path: Path) -> LocalViewers:
    return LocalViewers(
        tmp_path / "run",
        repo_root(),
        grafana_port=free_port(),
        jaeger_ui_port=free_port(),
        otlp_http_port=free_port(),
        otlp_grpc_port=free_port(),
        jaeger_health_port=free_port(),
    )


def test_jaeger_1_and_grafana_start_with_the_exact_commands_and_wait_until_ready(
    fakes: Path, tmp_path: Path
) -> None:
    _fake(fakes, "jaeger-all-in-one")
    _fake(fakes, "grafana-server")
    viewers = _viewers(tmp_path)
    try:
        viewers.start_jaeger()
        jaeger = viewers.jaeger_process
        assert jaeger is not None, viewers.notes
        # Ready means the admin port's health answered (the stand-in sleeps first).
        assert http_get(f"http://127.0.0.1:{viewers.jaeger_health_port}/")[0] == 200
        assert _recorded(fakes, "jaeger-all-in-one")["argv"][1:] == [
            "--memory.max-traces=100000",
            "--collector.otlp.enabled=true",
            f"--collector.otlp.http.host-port=127.0.0.1:{viewers.otlp_http_port}",
            f"--collector.otlp.grpc.host-port=127.0.0.1:{viewers.otlp_grpc_port}",
            f"--query.http-server.host-port=127.0.0.1:{viewers.jaeger_ui_port}",
            f"--query.grpc-server.host-port=127.0.0.1:{viewers.jaeger_ui_port - 1}",
            f"--admin.http.host-port=127.0.0.1:{viewers.jaeger_health_port}",
        ]
        assert viewers.service_env() == {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{viewers.otlp_http_port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        }

        viewers.start_grafana("http://127.0.0.1:19090")
        grafana = viewers.grafana_process
        assert grafana is not None, viewers.notes
        assert viewers.notes == []
        assert http_get(grafana.url + "/api/health")[0] == 200
        run = _recorded(fakes, "grafana-server")
        home = grafana.homepath()
        assert run["argv"][1:] == ([f"--homepath={home}"] if home else [])
        env = run["env"]
        provisioning = tmp_path / "run" / "grafana" / "provisioning"
        assert env["GF_PATHS_PROVISIONING"] == str(provisioning)
        assert env["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"
        assert env["GF_SERVER_HTTP_PORT"] == str(viewers.grafana_port)
        assert env["GF_PATHS_DATA"] == str(tmp_path / "run" / "grafana" / "data")
        assert env["GF_ANALYTICS_REPORTING_ENABLED"] == "false"
        assert env["SERVESCOPE_DASHBOARDS"] == str(repo_root() / "dashboards")
        # The repository's provisioning, pointed at this run's Prometheus and Jaeger.
        sources = yaml.safe_load((provisioning / "datasources" / "servescope.yaml").read_text())[
            "datasources"
        ]
        urls = {s["uid"]: s["url"] for s in sources}
        assert urls["prometheus"] == "http://127.0.0.1:19090"
        assert urls["jaeger"] == f"http://127.0.0.1:{viewers.jaeger_ui_port}"
        assert (provisioning / "dashboards" / "servescope.yaml").is_file()
        rows = dict(viewers.summary())
        assert rows["grafana"].startswith(grafana.url)
        assert rows["jaeger"].startswith(f"http://127.0.0.1:{viewers.jaeger_ui_port}")
    finally:
        codes = viewers.stop()
    assert set(codes) == {"grafana", "jaeger"}
    assert viewers.processes() and not any(p.running() for p in viewers.processes())


def test_jaeger_2_and_grafana_server_subcommand(fakes: Path, tmp_path: Path) -> None:
    _fake(fakes, "jaeger")
    _fake(fakes, "grafana")
    viewers = _viewers(tmp_path)
    try:
        viewers.start_jaeger()
        viewers.start_grafana(None)
        assert viewers.jaeger_process and viewers.grafana_process, viewers.notes
        config_path = tmp_path / "run" / "jaeger.yaml"
        assert _recorded(fakes, "jaeger")["argv"][1:] == [f"--config={config_path}"]
        config = yaml.safe_load(config_path.read_text())
        assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"] == (
            f"127.0.0.1:{viewers.otlp_http_port}"
        )
        assert config["extensions"]["jaeger_query"]["http"]["endpoint"] == (
            f"127.0.0.1:{viewers.jaeger_ui_port}"
        )
        assert config["service"]["pipelines"]["traces"]["exporters"] == ["jaeger_storage_exporter"]
        assert _recorded(fakes, "grafana")["argv"][1] == "server"
        assert http_get(viewers.jaeger_process.url + "/status")[0] == 200
    finally:
        viewers.stop()


def test_a_viewer_that_dies_is_a_note_not_a_failure(
    fakes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake(fakes, "jaeger-all-in-one")
    monkeypatch.setenv("FAKE_FAIL", "1")
    viewers = _viewers(tmp_path)
    viewers.start_jaeger()
    assert viewers.jaeger_process is None
    assert viewers.service_env() == {}
    assert any("jaeger exited (code 3)" in n and "without Jaeger" in n for n in viewers.notes)


def test_without_the_binaries_one_line_says_how_to_get_them_and_the_stand_ins(
    fakes: Path, tmp_path: Path
) -> None:
    viewers = _viewers(tmp_path)
    viewers.start_jaeger()
    viewers.start_grafana(None)
    assert viewers.processes() == []
    (note,) = viewers.notes
    assert "\n" not in note
    for text in ("Grafana", "Jaeger", "servescope dashboards render", "servescope trace"):
        assert text in note
    assert missing_note(grafana=False, jaeger=False) is None
    assert "Grafana" not in (missing_note(grafana=False, jaeger=True) or "")


def test_up_passes_the_jaeger_endpoint_to_every_service(fakes: Path, tmp_path: Path) -> None:
    session = LocalSession(run_dir=tmp_path / "run")
    session.run_dir.mkdir()
    session.viewers = _viewers(tmp_path)
    assert all("OTEL_EXPORTER_OTLP_ENDPOINT" not in e for e in session.service_env().values())
    _fake(fakes, "jaeger-all-in-one")
    try:
        session.viewers.start_jaeger()
        for name, env in session.service_env().items():
            assert (
                env["OTEL_EXPORTER_OTLP_ENDPOINT"] == session.viewers.jaeger_process.otlp_endpoint
            ), name
            # ... and the trace files stay, for `servescope trace` and the labs.
            assert env["SERVESCOPE_TRACE_FILE"].endswith(f"traces/{name}.jsonl")
    finally:
        session.viewers.stop()


def test_grafana_finds_its_homepath_next_to_the_binary(tmp_path: Path) -> None:
    home = tmp_path / "grafana-v11"
    (home / "bin").mkdir(parents=True)
    (home / "conf").mkdir()
    (home / "conf" / "defaults.ini").write_text("")
    grafana = GrafanaProcess(tmp_path / "run", str(home / "bin" / "grafana"), repo_root())
    assert grafana.command() == [str(home / "bin" / "grafana"), "server", f"--homepath={home}"]
    assert JaegerProcess(tmp_path, "/opt/jaeger").ready_path == "/status"
    assert JaegerProcess(tmp_path, "/opt/jaeger-all-in-one").ready_path == "/"


def test_services_export_to_otlp_and_the_trace_file_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from servescope.telemetry import tracing
    from servescope.telemetry.settings import TelemetrySettings

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(tracing.trace, "set_tracer_provider", lambda provider: None)
    settings = TelemetrySettings(service_name="x", trace_file=tmp_path / "x.jsonl")
    provider = tracing.configure_tracing(settings)
    assert provider is not None
    exporters = [
        getattr(p, "span_exporter", None) or p._batch_processor._exporter
        for p in provider._active_span_processor._span_processors
    ]
    provider.shutdown()
    # The OTLP exporter inside the wrapper that counts the batches it gives up on.
    names = [type(getattr(e, "exporter", e)).__name__ for e in exporters]
    assert names == ["OTLPSpanExporter", "JsonLinesSpanExporter"]
