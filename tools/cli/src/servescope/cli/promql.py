"""The series a PromQL expression reads, from a real PromQL parser (`promql-parser`, the
Python binding of the Rust parser that follows Prometheus's grammar), not a hand scan.

One place for the SLO generator (every name an SLO query reads must be declared in the
telemetry contract), the rule and runbook checks, and the dashboard tests. The expression must
be plain PromQL: template variables (Grafana's `$__rate_interval`, Sloth's `{{.window}}`) are
the caller's to substitute first.

The parser follows Prometheus 2.45's grammar. Every rule, SLO, runbook, responder and
dashboard query in the repository parses with it, so there is no fallback scanner; a query
written in later syntax (Prometheus 3's quoted UTF-8 metric names, say) is refused with the
parser's message rather than misread.
"""

from __future__ import annotations

from dataclasses import dataclass

import promql_parser

# MatchOp values compare equal but are not hashable, so a list of pairs rather than a dict.
_OPS = (
    (promql_parser.MatchOp.Equal, "="),
    (promql_parser.MatchOp.NotEqual, "!="),
    (promql_parser.MatchOp.Re, "=~"),
    (promql_parser.MatchOp.NotRe, "!~"),
)


def _op(op: promql_parser.MatchOp) -> str:
    return next(text for value, text in _OPS if value == op)


class PromQLError(ValueError):
    """An expression the parser refuses; the message is the parser's."""


@dataclass(frozen=True)
class Selector:
    """One series selector: the metric name (None for `{job="x"}`) and its label matchers."""

    metric: str | None
    matchers: tuple[tuple[str, str, str], ...]  # (label, op, value), op as written in PromQL


def parse(expr: str) -> promql_parser.Expr:
    try:
        return promql_parser.parse(expr)
    except (ValueError, RuntimeError) as exc:  # the binding raises ValueError on syntax errors
        raise PromQLError(f"not valid PromQL: {exc}: {expr.strip()}") from exc


def selectors(expr: str) -> list[Selector]:
    """Every series selector of an expression, in the order they appear, including those
    inside range vectors, subqueries and function arguments."""
    found: list[Selector] = []

    def visit(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            groups = [node.matchers.matchers, *node.matchers.or_matchers]
            matchers = tuple((m.name, _op(m.op), m.value) for group in groups for m in group)
            name = node.name
            if name is None:  # {__name__="x"}: the name is a matcher
                names = {v for label, op, v in matchers if label == "__name__" and op == "="}
                name = names.pop() if len(names) == 1 else None
            found.append(
                Selector(name, tuple(m for m in matchers if m[0] != "__name__" or m[1] != "="))
            )
        return True

    promql_parser.walk(parse(expr), visit)
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (a selector without one, `{job="x"}`, adds
    nothing)."""
    return {s.metric for s in selectors(expr) if s.metric is not None}
