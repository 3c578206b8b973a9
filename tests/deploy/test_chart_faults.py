"""The chart's `faults` value: off by default; enabled, the admin token comes from a Secret
mounted as a file (never a plain value, never env) and the specs become SERVESCOPE_FAULTS; bad
values fail to render."""

from __future__ import annotations

from typing import Any

import pytest

from servescope.runtime.settings import SECRETS_DIR


def _classifier(helm, values: dict[str, Any]) -> dict[str, Any]:
    rendered = helm.render(values={"components": {"classifier": values}})
    return helm.containers(rendered.named("Deployment", "servescope-classifier"))[0]


def _secret_volumes(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in deployment["spec"]["template"]["spec"]["volumes"] if "projected" in v]


def test_faults_are_off_by_default(helm) -> None:
    for deployment in helm.render().of_kind("Deployment"):
        env = {e["name"] for e in helm.containers(deployment)[0].get("env", [])}
        assert not env & {"SERVESCOPE_ADMIN_TOKEN", "SERVESCOPE_FAULTS"}, deployment["metadata"]
        assert _secret_volumes(deployment) == [], deployment["metadata"]


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
    assert "SERVESCOPE_ADMIN_TOKEN" not in entries  # a file, never env (CKV_K8S_35)
    assert entries["SERVESCOPE_FAULTS"]["value"] == "delay:infer:0.5,slow_start:30"
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "servescope-secrets"]
    assert mount == {
        "name": "servescope-secrets", "mountPath": str(SECRETS_DIR), "readOnly": True,
    }  # fmt: skip
    # Only the component that asked for it.
    rendered = helm.render(
        values={"components": {"classifier": {"faults": {"enabled": True, "existingSecret": "s"}}}}
    )
    (volume,) = _secret_volumes(rendered.named("Deployment", "servescope-classifier"))
    assert volume["projected"]["sources"] == [
        {"secret": {"name": "s", "items": [{"key": "token", "path": "SERVESCOPE_ADMIN_TOKEN"}]}}
    ]
    edge = rendered.named("Deployment", "servescope-preprocess")
    assert "SERVESCOPE_ADMIN_TOKEN" not in {e["name"] for e in helm.containers(edge)[0]["env"]}
    assert _secret_volumes(edge) == []


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
