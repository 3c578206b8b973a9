"""Reference solution: the `inputs` playbook in playbooks.py and its culprit in culprits.py.

The runbook page comes from solution/ like any reference file; this adds the responder's
part. Edits are anchored on the lines they follow (PLAYBOOKS and its closing brace; the
definition of find_culprit and its final fallback), so they survive unrelated changes to
the same files, and each is skipped when it is already there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext

PLAYBOOKS = "services/responder/src/servescope/responder/playbooks.py"
CULPRITS = "services/responder/src/servescope/responder/culprits.py"

CHECKS = """\
# Bad inputs: who refuses them and why. rejected_ratio is the alert's own expression, per
# service; rejected the refusals per second by service and reason.
INPUT_CHECKS = (
    Check(
        "rejected_ratio",
        "share of each service's requests refused as bad input (probes left out)",
        "sum by (job) (rate("
        f'servescope_rejected_inputs_total{{{{job=~"{JOBS}"{{ns}}}}}}[{{window}}]))\\n/\\n'
        "sum by (job) (rate(http_server_request_duration_seconds_count"
        f'{{{{job=~"{JOBS}", http_route!~"{PROBES}"{{ns}}}}}}[{{window}}]))',
    ),
    Check(
        "rejected",
        "inputs refused, by service and reason (per second)",
        "sum by (job, reason) (rate("
        f'servescope_rejected_inputs_total{{{{job=~"{JOBS}"{{ns}}}}}}[{{window}}])) > 0',
    ),
)

"""

CULPRIT = '''\
def inputs_culprit(results: Results, alert_service: str | None) -> Culprit:
    """The service refusing the largest share of its requests, and its most frequent reason."""
    shares = {s: v for s, v in _values(results, "rejected_ratio", "job").items() if s}
    rates: dict[str, dict[str, float]] = {}
    for sample in results["rejected"].samples if "rejected" in results else []:
        job, why = sample.labels.get("job", ""), sample.labels.get("reason", "")
        if job and why and math.isfinite(sample.value):
            rates.setdefault(job, {})[why] = sample.value
    evidence = [
        f"{job} refuses {share:.1%} of its requests"
        for job, share in sorted(shares.items(), key=lambda i: -i[1])
    ]
    evidence += [
        f"{job}: {why} {rate:.2f}/s"
        for job, by_reason in sorted(rates.items())
        for why, rate in sorted(by_reason.items(), key=lambda i: -i[1])
    ]
    candidates = shares or {job: sum(r.values()) for job, r in rates.items()}
    if not candidates:
        return Culprit(
            alert_service,
            stage="inputs",
            summary="no refused inputs in the window: the burst is over; see the runbook",
            evidence=evidence,
        )
    # The largest share; on a tie, the alert's own service.
    service = max(candidates, key=lambda s: (candidates[s], s == alert_service))
    reasons = rates.get(service, {})
    reason = max(reasons, key=lambda r: reasons[r]) if reasons else None
    share = f"{shares[service]:.0%} of its requests" if service in shares else "requests"
    mostly = f", mostly {reason} ({reasons[reason]:.2f}/s)" if reason else ""
    where = (
        "the clients send inputs it cannot use"
        if service == EDGE.name
        else "its callers are our own services: a release upstream sends what it refuses"
    )
    return Culprit(
        service,
        stage="inputs",
        step=reason,
        summary=f"{service} refuses {share}{mostly}: {where}",
        evidence=evidence,
    )


'''


def _add_checks(text: str) -> str:
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("PLAYBOOKS: dict["))
    end = next(i for i in range(start, len(lines)) if lines[i].rstrip() == "}")
    entry = '    "inputs": INPUT_CHECKS,\n'
    return "".join([*lines[:start], CHECKS, *lines[start:end], entry, *lines[end:]])


def _add_culprit(text: str) -> str:
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("def find_culprit("))
    # The fallback: the first statement at the function's own indentation that returns.
    fallback = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("    return "))
    branch = '    if category == "inputs":\n        return inputs_culprit(results, service)\n'
    return "".join([*lines[:start], CULPRIT, *lines[start:fallback], branch, *lines[fallback:]])


def solve(ctx: CheckContext) -> None:
    playbooks = ctx.root / PLAYBOOKS
    if "INPUT_CHECKS" not in playbooks.read_text():
        playbooks.write_text(_add_checks(playbooks.read_text()))
    culprits = ctx.root / CULPRITS
    if "def inputs_culprit(" not in culprits.read_text():
        culprits.write_text(_add_culprit(culprits.read_text()))
