"""The pipeline's facts: loaded from the contract, consistent, and loud when code disagrees."""

from __future__ import annotations

import copy
from importlib import resources
from typing import Any

import pytest
import yaml

from servescope.telemetry.contract import ContractError, _parse, load_contract
from servescope.telemetry.pipeline import PIPELINE, PipelineError, parse

RAW: dict[str, Any] = yaml.safe_load(
    resources.files("servescope.telemetry").joinpath("contract.yaml").read_text()
)


def raw() -> dict[str, Any]:
    return copy.deepcopy(RAW)


def test_the_declared_facts() -> None:
    assert PIPELINE.stage_names == ("decode", "preprocess", "infer", "postprocess", "end_to_end")
    assert PIPELINE.service_names == ("preprocess", "classifier", "postprocess")
    assert PIPELINE.job_regex == "preprocess|classifier|postprocess"
    assert PIPELINE.deepest_first == ("classifier", "postprocess", "preprocess")
    assert PIPELINE.fault_steps("preprocess") == ("decode", "resize", "normalise")
    assert PIPELINE.fault_steps("classifier") == ("infer",)
    assert PIPELINE.fault_steps("postprocess") == ("softmax_topk",)
    assert PIPELINE.total.name == "end_to_end"
    assert [s.name for s in PIPELINE.parts] == ["decode", "preprocess", "infer", "postprocess"]
    assert dict(PIPELINE.drift_thresholds) == {
        "pixel_psi": 0.25,
        "class_psi": 0.25,
        "mean_intensity_shift": 0.1,
    }


def test_a_step_is_its_span_and_runs_where_its_stage_does() -> None:
    for step in PIPELINE.steps:
        assert step.span == step.name
        assert step.service == PIPELINE.stage(step.stage).service
    assert PIPELINE.step("infer").stage == "infer"  # one name for the classifier's step


def test_the_probe_regex_matches_probes_and_not_traffic() -> None:
    for route in ("/metrics", "/healthz", "/readyz", "/v2/health/live", "/v2/models/{name}/ready"):
        assert PIPELINE.is_probe(route), route
    for route in ("/v1/predict", "/v2/models/{name}/infer", "/v1/postprocess", "/v2"):
        assert not PIPELINE.is_probe(route), route
    assert PIPELINE.is_probe("/admin/faults/{step}")


def test_code_that_disagrees_fails_naming_itself() -> None:
    with pytest.raises(PipelineError, match=r"some\.module runs classifier steps inference"):
        PIPELINE.expect_steps("classifier", "inference", where="some.module")
    with pytest.raises(PipelineError, match=r"some\.module times stages decode, infer"):
        PIPELINE.expect_stages("decode", "infer", where="some.module")
    with pytest.raises(PipelineError, match="computes drift signals pixel_psi"):
        PIPELINE.expect_drift_signals("pixel_psi", where="x")
    steps = PIPELINE.expect_steps("preprocess", "decode", "resize", "normalise", where="x")
    assert [s.name for s in steps] == ["decode", "resize", "normalise"]


def test_the_contract_derives_its_labels_spans_and_help_from_the_pipeline() -> None:
    contract = load_contract()
    assert contract.pipeline == PIPELINE
    assert contract.label_rules["step"].values == (*PIPELINE.step_names, "")
    help_text = contract.metric("servescope_fault_value").help
    assert "classifier: infer; postprocess: softmax_topk" in help_text
    assert "{pipeline." not in " ".join(m.help for m in contract.metrics)
    spans = {s.name: s for s in contract.spans if s.kind == "INTERNAL"}
    assert spans["infer"].services == ("classifier",)
    assert spans["infer"].meaning == PIPELINE.step("infer").meaning


def test_a_stale_label_list_fails_at_load_naming_it() -> None:
    stale = raw()
    stale["label_values"]["step"] = ["decode", "resize", "normalise", "inference", "softmax"]
    with pytest.raises(ContractError, match=r"label_values\.step lists .*pipeline\.steps"):
        _parse(stale)
    same = raw()
    same["label_values"]["stage"] = list(PIPELINE.stage_names)
    assert _parse(same).label_rules["stage"].values == PIPELINE.stage_names


def test_a_step_without_its_span_or_a_step_span_by_name_fails() -> None:
    missing = raw()
    missing["spans"] = [s for s in missing["spans"] if s.get("step") != "infer"]
    with pytest.raises(ContractError, match=r"without a `- step:` span entry: \['infer'\]"):
        _parse(missing)
    by_name = raw()
    by_name["spans"].append(
        {
            "name": "resize",
            "kind": "INTERNAL",
            "services": ["preprocess"],
            "attributes": [],
            "meaning": "x",
        }
    )
    with pytest.raises(ContractError, match="'resize' is a pipeline step"):
        _parse(by_name)


def test_an_unknown_placeholder_or_probe_fails() -> None:
    unknown = raw()
    unknown["metrics"][0]["help"] = "Stages: {pipeline.stagez}."
    with pytest.raises(ContractError, match=r"unknown placeholder \{pipeline\.stagez\}"):
        _parse(unknown)
    probe = raw()
    probe["pipeline"]["probe_routes"].append("/livez")
    with pytest.raises(ContractError, match="'/livez' matches no declared route"):
        _parse(probe)


def test_inconsistent_declarations_fail() -> None:
    twice = raw()["pipeline"]
    twice["stages"][1]["steps"].append({"name": "decode", "meaning": "again"})
    with pytest.raises(PipelineError, match=r"steps declared twice: \['decode'\]"):
        parse(twice)
    stray = raw()["pipeline"]
    stray["stages"][0]["service"] = "cache"
    with pytest.raises(PipelineError, match="undeclared service 'cache'"):
        parse(stray)
    no_total = raw()["pipeline"]
    no_total["stages"][-1].pop("total")
    with pytest.raises(PipelineError, match="exactly one stage is the total"):
        parse(no_total)
    orphan = raw()["pipeline"]
    orphan["services"].append({"name": "cache", "meaning": "nobody calls it"})
    with pytest.raises(PipelineError, match=r"not called by the edge"):
        parse(orphan)
