"""The chart's `faults` value: off by default; enabled, the admin token comes from a Secret
(never a plain value) and the specs become SERVESCOPE_FAULTS; bad values fail to render."""

from __future__ import annotations

from typing import Any

import pytest


def _classifier(helm, values: dict[str, Any]) -> dict[str, Any]:
    rendered = helm.render(values={"components": {"classifier": values}})
    return helm.containers(rendered.named("Deployment", "servescope-classifier"))[0]


def test_faults_are_off_by_default(helm) -> None:
    for deployment in helm.render().of_kind("Deployment"):
        env = {e["name"] for e in helm.containers(deployment)[0].get("env", [])}
        assert not env & {"SERVESCOPE_ADMIN_TOKEN", "SERVESCOPE_FAULTS"}, deployment["metadata"]


def test_enabled_faults_take_the_token_from_a_secret_and_the_specs_as_env(helm) -> None:
    container = _classifier(
        helm,
        {
            "faults": {
                "enabled": True,
                "existingSecret": "servescope-admin",
                "specs": ["delay:infer:0.5", "slow_start:30"],
            }
        },
    )
    entries = {e["name"]: e for e in container["env"]}
    assert entries["SERVESCOPE_ADMIN_TOKEN"] == {
        "name": "SERVESCOPE_ADMIN_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "servescope-admin", "key": "token"}},
    }
    assert entries["SERVESCOPE_FAULTS"]["value"] == "delay:infer:0.5,slow_start:30"
    # Only the component that asked for it.
    rendered = helm.render(
        values={"components": {"classifier": {"faults": {"enabled": True, "existingSecret": "s"}}}}
    )
    edge = helm.containers(rendered.named("Deployment", "servescope-preprocess"))[0]
    assert "SERVESCOPE_ADMIN_TOKEN" not in {e["name"] for e in edge["env"]}


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"faults": {"enabled": True}}, "needs faults.existingSecret"),
        ({"faults": {"specs": ["unready"]}}, "needs faults.enabled"),
        ({"env": {"SERVESCOPE_ADMIN_TOKEN": "plain"}}, "is a secret"),
        ({"faults": {"enabled": True, "existingSecret": "s", "token": "x"}}, "token"),
        ({"faults": {"enabled": True, "existingSecret": "s", "specs": ["meltdown"]}}, "meltdown"),
        ({"faults": {"enabled": "yes"}}, "enabled"),
    ],
)
def test_bad_fault_values_fail_to_render(helm, values: dict[str, Any], says: str) -> None:
    with pytest.raises(helm.RenderError, match=says):
        helm.render_values({"components": {"classifier": values}})
