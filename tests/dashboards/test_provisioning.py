"""Provisioning for a local Grafana and the chart: the provider loads dashboards/, the
datasources' uids are what exemplar links need, the Loki datasources' derived field finds
the trace id in a real service log line and links it to the Jaeger datasource, and the chart
reads the JSON in place."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest
import yaml

from servescope.cli.paths import repo_root
from servescope.dashboards import DASHBOARDS, OUTPUT_DIR

ROOT = repo_root()
GRAFANA = ROOT / "deploy" / "local" / "grafana" / "provisioning"


def test_the_folder_provider_loads_the_dashboards_folder() -> None:
    (provider,) = yaml.safe_load((GRAFANA / "dashboards" / "servescope.yaml").read_text())[
        "providers"
    ]
    assert provider["type"] == "file"
    assert provider["folder"] == "Servescope"
    assert provider["options"]["path"] == "$SERVESCOPE_DASHBOARDS"


def test_exemplars_link_to_the_jaeger_datasource() -> None:
    sources = yaml.safe_load((GRAFANA / "datasources" / "servescope.yaml").read_text())
    by_type = {s["type"]: s for s in sources["datasources"]}
    destinations = by_type["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert destinations == [{"name": "trace_id", "datasourceUid": by_type["jaeger"]["uid"]}]
    # The contract's exemplar label is trace_id.
    assert "trace_id" in (ROOT / "docs" / "telemetry.md").read_text()


def test_the_chart_links_the_dashboards_folder() -> None:
    link = ROOT / "deploy" / "helm" / "servescope" / "files" / "dashboards"
    assert link.is_symlink(), "files/dashboards must link to dashboards/, not copy it"
    assert link.resolve() == (ROOT / OUTPUT_DIR).resolve()
    # The member's code sits beside the JSON; .helmignore keeps it out of the chart package.
    names = {p.name for p in link.iterdir()}
    code = {"README.md", "pyproject.toml", "src"}
    assert names - code == {f"{name}.json" for name in DASHBOARDS}
    ignored = (ROOT / "deploy" / "helm" / "servescope" / ".helmignore").read_text().split()
    assert {"files/dashboards/src/", "files/dashboards/pyproject.toml"} <= set(ignored)


# A line logged inside a span by the services' own logging setup; stderr gets the trace id.
_LOG_IN_A_SPAN = """
import sys
import structlog
from opentelemetry.sdk.trace import TracerProvider
from servescope.telemetry.logging import configure_logging

configure_logging("preprocess", "0.1.0")
tracer = TracerProvider().get_tracer("test")
with tracer.start_as_current_span("request") as span:
    structlog.get_logger().warning(
        "request_rejected", kind="invalid_image", stage="decode", error="not an image"
    )
    print(format(span.get_span_context().trace_id, "032x"), file=sys.stderr)
"""
# Constructs Python's re has and Go's RE2 (Grafana's matcher) lacks, or reads differently.
_NOT_GO = re.compile(r"\(\?[=!<>P]|\\[1-9]|[*+?}][+]|\\[AZz]|\(\?[a-z]*\)")


def _derived_field_sources() -> dict[str, list[dict[str, Any]]]:
    """Every Grafana datasource list that has a Loki datasource: local and Kubernetes."""
    local = yaml.safe_load((GRAFANA / "datasources" / "servescope.yaml").read_text())
    stack = yaml.safe_load((ROOT / "deploy/stack/kube-prometheus-stack.yaml").read_text())
    return {
        "local": local["datasources"],
        "kubernetes": stack["grafana"]["additionalDataSources"],
    }


@pytest.fixture(scope="module")
def service_log_line() -> tuple[str, str]:
    """(JSON line, trace id) from servescope.telemetry.logging, in a fresh interpreter so the
    global logging setup stays out of the test process."""
    done = subprocess.run(
        [sys.executable, "-c", _LOG_IN_A_SPAN], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    return line, done.stderr.strip()


@pytest.mark.parametrize("where", ["local", "kubernetes"])
def test_log_trace_ids_link_to_the_jaeger_datasource(
    where: str, service_log_line: tuple[str, str]
) -> None:
    sources = _derived_field_sources()[where]
    by_type = {s["type"]: s for s in sources}
    jaeger_uid = by_type["jaeger"]["uid"]
    (field,) = by_type["loki"]["jsonData"]["derivedFields"]
    assert field["name"] == "trace_id"
    assert field["datasourceUid"] == jaeger_uid
    # $$ is provisioning's escape for a literal $: Grafana sees ${__value.raw}.
    assert field["url"].replace("$$", "$") == "${__value.raw}"
    # Jaeger's logs side of the link comes back to this Loki.
    assert (
        by_type["jaeger"]["jsonData"]["tracesToLogsV2"]["datasourceUid"] == by_type["loki"]["uid"]
    )

    pattern = field["matcherRegex"]
    assert not _NOT_GO.search(pattern), f"{pattern} uses a construct Go's regexp lacks"
    line, trace_id = service_log_line
    record = json.loads(line)
    assert record["trace_id"] == trace_id and re.fullmatch(r"[0-9a-f]{32}", trace_id)
    # The line as the service prints it, as Fluent Bit ships it (the record with its own
    # keys added, compact JSON: Line_Format json) and as other JSON encoders space it.
    shipped = json.dumps({"date": 1.0, **record}, separators=(",", ":"))
    for text in (line, shipped, json.dumps(record)):
        match = re.search(pattern, text)
        assert match and match[1] == trace_id, (pattern, text)
    # A line outside any request has no trace id and no link.
    assert not re.search(pattern, json.dumps({"event": "model_loaded", "service": "x"}))


def test_the_jaeger_uid_is_the_same_everywhere() -> None:
    uids = {
        where: {s["type"]: s["uid"] for s in sources}
        for where, sources in _derived_field_sources().items()
    }
    assert uids["local"] == uids["kubernetes"] | {"prometheus": uids["local"]["prometheus"]}
    stack = yaml.safe_load((ROOT / "deploy/stack/kube-prometheus-stack.yaml").read_text())
    exemplars = stack["grafana"]["sidecar"]["datasources"]["exemplarTraceIdDestinations"]
    assert exemplars["datasourceUid"] == uids["kubernetes"]["jaeger"]
