"""The PromQL helper: names and matchers from the parser, not a scan."""

from __future__ import annotations

import pytest

from servescope.cli.promql import PromQLError, Selector, metric_names, selectors


def test_names_come_from_selectors_only() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (job, le) (rate(a_bucket{job=~"x|y"}[5m])))'
        " / on (job) group_left b:c:d or 0 * vector(1) > bool 2 unless up offset 1h"
    )
    assert metric_names(expr) == {"a_bucket", "b:c:d", "up"}
    # Label names in by(), function names, keywords and strings are not metrics.
    assert metric_names('label_replace(up, "dst", "$1", "src", "(by|rate)")') == {"up"}
    assert metric_names('topk(15, count by (__name__) ({job="x"}))') == set()


def test_matchers_keep_their_operator_and_raw_value() -> None:
    (sel,) = selectors('x_bucket{le="0.5", http_route="/v2/models/{name}/infer", a!~"b"}')
    assert sel == Selector(
        "x_bucket",
        (("le", "=", "0.5"), ("http_route", "=", "/v2/models/{name}/infer"), ("a", "!~", "b")),
    )


def test_a_name_matcher_is_the_metric_name() -> None:
    assert selectors('{__name__="up", job="x"}') == [Selector("up", (("job", "=", "x"),))]


def test_subqueries_and_ranges_are_walked() -> None:
    assert metric_names("max_over_time(rate(x_total[1m])[1h:5m]) + y offset 5m") == {
        "x_total",
        "y",
    }


@pytest.mark.parametrize("bad", ["rate(x[", "made_up_function(x)", "rate(x[$__rate_interval])"])
def test_invalid_promql_is_refused_with_the_parsers_reason(bad: str) -> None:
    with pytest.raises(PromQLError, match="not valid PromQL"):
        metric_names(bad)
