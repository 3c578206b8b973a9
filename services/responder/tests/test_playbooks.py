"""Playbooks: the queries rendered for a window and a namespace, durations, categories."""

from __future__ import annotations

import pytest

from servescope.responder import playbooks as p


def test_every_category_has_its_playbook_and_others_get_the_generic_one() -> None:
    for category in ("latency", "errors", "availability", "traffic", "saturation", "model"):
        assert p.playbook(category) == p.PLAYBOOKS[category]
    assert p.playbook(None) == p.playbook("whatever") == p.GENERIC_CHECKS
    assert [c.key for c in p.GENERIC_CHECKS] == ["up", "error_ratio", "stage_p95"]


def test_check_keys_are_unique_within_a_playbook() -> None:
    for category, checks in p.PLAYBOOKS.items():
        keys = [c.key for c in checks]
        assert len(keys) == len(set(keys)), category


def test_rendering_fills_in_the_window_and_the_namespace() -> None:
    (stage_p95,) = [c for c in p.LATENCY_CHECKS if c.key == "stage_p95"]
    assert p.render_check(stage_p95, "10m") == (
        "histogram_quantile(0.95, sum by (stage, le) (rate("
        'servescope_stage_duration_seconds_bucket{stage!=""}[10m])))'
    )
    assert p.render_check(stage_p95, "5m", "servescope") == (
        "histogram_quantile(0.95, sum by (stage, le) (rate("
        'servescope_stage_duration_seconds_bucket{stage!="", namespace="servescope"}[5m])))'
    )


def test_a_namespace_cannot_break_out_of_its_label_matcher() -> None:
    (up,) = [c for c in p.AVAILABILITY_CHECKS if c.key == "up"]
    rendered = p.render_check(up, "5m", 'x"} or vector(1) or up{a="\\')
    assert rendered == (
        'up{job=~"preprocess|classifier|postprocess", '
        'namespace="x\\"} or vector(1) or up{a=\\"\\\\"}'
    )


def test_every_rendered_query_is_free_of_placeholders() -> None:
    for checks in p.PLAYBOOKS.values():
        for check in checks:
            for namespace in (None, "ns"):
                query = p.render_check(check, "5m", namespace)
                assert "{window}" not in query and "{ns}" not in query, check.key
                assert query.count("(") == query.count(")"), check.key
                assert query.count("{") == query.count("}"), check.key


def test_the_request_path_is_the_pipelines() -> None:
    assert p.JOBS == "preprocess|classifier|postprocess"
    for key in ("up", "ready", "readiness_changes"):
        (check,) = [c for c in p.AVAILABILITY_CHECKS if c.key == key]
        # The responder is scraped too: its own readiness is not the request path's.
        assert f'job=~"{p.JOBS}"' in p.render_check(check, "5m"), key


def test_durations() -> None:
    assert p.parse_duration("90s") == 90
    assert p.parse_duration("1h30m") == 5400
    assert p.parse_duration("250ms") == 0.25
    for bad in ("5 minutes", "", "5", "m5", "5m "):
        with pytest.raises(ValueError, match="not a Prometheus duration"):
            p.parse_duration(bad)


def test_categories_are_a_bounded_label() -> None:
    assert p.category_of("latency") == "latency"
    assert p.category_of("something-new") == p.category_of(None) == "other"
