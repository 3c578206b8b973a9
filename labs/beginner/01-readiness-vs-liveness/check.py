"""Checker for beginner/01-readiness-vs-liveness.

1. work/preprocess.env points SERVESCOPE_CLASSIFIER_URL at the classifier the lab runs.
2. The running edge is alive (/healthz 200) and ready (/readyz 200): it was restarted with
   the fixed setting and reached the classifier.
3. A prediction goes through the whole pipeline (POST /v1/predict answers 200).
4. The learner's answer names the readiness probe, its cause (the classifier, a dependency),
   and why liveness must not fail for it (a restart does not help; crash loops).
"""

from __future__ import annotations

import re
import urllib.parse
from typing import TYPE_CHECKING

from servescope.cli.labs.workspace import read_env_file
from servescope.cli.paths import heldout_dir

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext, Response

LAB = "beginner/01-readiness-vs-liveness"
SETTING = "SERVESCOPE_CLASSIFIER_URL"


def _host_port(url: str) -> tuple[str | None, int | None]:
    try:
        parts = urllib.parse.urlsplit(url)
        return parts.hostname, parts.port
    except ValueError:
        return None, None


def check(ctx: CheckContext) -> None:
    env_file = ctx.workspace / "preprocess.env"
    try:
        settings = read_env_file(env_file)
    except (OSError, ValueError) as exc:
        ctx.fail(
            "work/preprocess.env is readable KEY=VALUE lines",
            f"{exc}; `servescope lab reset {LAB}` gives you the starter file back",
        )
        return
    configured = settings.get(SETTING, "")
    classifier = ctx.urls["classifier"]
    ctx.require(
        _host_port(configured)[1] == _host_port(classifier)[1]
        and _host_port(configured)[0] in ("127.0.0.1", "localhost"),
        f"{SETTING} in work/preprocess.env points at the classifier ({classifier})",
        f"it says {configured or 'nothing'!r}. Which port does the classifier listen on? "
        "`servescope lab status` lists the lab's URLs, and .run/preprocess.log shows where the "
        "edge is knocking",
    )

    edge = ctx.urls["preprocess"]
    alive = ctx.http_get(edge + "/healthz", timeout=2).status
    if not ctx.require(
        alive == 200,
        "the edge is alive (/healthz answers 200)",
        f"/healthz answered {alive or 'nothing'}: is the lab running? `servescope lab start {LAB}`",
    ):
        return

    def _ready() -> Response | None:
        response = ctx.http_get(edge + "/readyz", timeout=2)
        return response if response.status == 200 else None

    # Readiness follows the first successful metadata fetch by a moment after a restart.
    ready = ctx.wait_for(_ready, timeout=3.0) or ctx.http_get(edge + "/readyz", timeout=2)
    waiting = ""
    if ready.status == 503:
        try:
            waiting = ", ".join(ready.json().get("waiting_for", []))
        except ValueError:
            waiting = ""
    ctx.require(
        ready.status == 200,
        "the edge is ready (/readyz answers 200)",
        (f"/readyz still says it is waiting for: {waiting}. " if waiting else "")
        + "A process reads its settings when it starts: after fixing work/preprocess.env, "
        f"`servescope lab restart {LAB}`",
    )
    if ready.status == 200:
        digit = next(iter(sorted(heldout_dir().glob("*.png"))))
        predicted = ctx.http_post(
            edge + "/v1/predict", digit.read_bytes(), content_type="image/png", timeout=5
        )
        ctx.require(
            predicted.status == 200,
            "a prediction goes through the whole pipeline (POST /v1/predict answers 200)",
            f"it answered {predicted.status}: {predicted.text[:200]}",
        )

    answer = (ctx.answer or "").lower()
    if not ctx.require(
        answer,
        "you answered the lab's question",
        f'servescope lab answer {LAB} "which probe failed, why, and why liveness must not fail '
        'for the same reason"',
    ):
        return
    ctx.require(
        re.search(r"readiness|readyz|\bready\b", answer),
        "your answer names the probe that failed (readiness, /readyz)",
        "which of the two answered 503: /healthz (liveness) or /readyz (readiness)?",
    )
    ctx.require(
        not re.search(
            r"(liveness|healthz)( probe)? (failed|fails|was failing|answered 503|returned 503)",
            answer,
        ),
        "your answer does not blame liveness",
        "/healthz answered 200 the whole time: the process was alive",
    )
    ctx.require(
        re.search(r"classifier|dependen|downstream|upstream|metadata|model", answer),
        "your answer says what readiness waited for (the classifier's model metadata)",
        "what did /readyz say it was waiting for, and from whom does the edge get it?",
    )
    ctx.require(
        re.search(r"restart|crash|kill|loop|cascad", answer),
        "your answer says why liveness must not fail for it (a restart cannot fix a dependency)",
        "what does Kubernetes do when liveness fails, and would that fix an unreachable "
        "classifier, or make every replica restart in a loop?",
    )
