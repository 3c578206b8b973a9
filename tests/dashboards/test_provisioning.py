"""Provisioning for a local Grafana and the chart: the provider loads dashboards/, the
datasources' uids are what exemplar links need, and the chart reads the JSON in place."""

from __future__ import annotations

import yaml

from servescope.loadgen.dashboards import DASHBOARDS, OUTPUT_DIR
from servescope.telemetry.settings import repo_root

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
    # Nothing but the dashboards' JSON (and their README) ships in the chart.
    names = {p.name for p in link.iterdir()}
    assert names - {"README.md"} == {f"{name}.json" for name in DASHBOARDS}
