"""Checker for advanced/02-log-sampling-filter: the learner's Fluent Bit Lua filter in LuaJIT.

The checker writes ~5,000 log records shaped like the ones Fluent Bit hands a Lua filter in
this project's cluster (structlog's JSON fields merged by the kubernetes filter, plus
`stream`, `time` and the `kubernetes` metadata table), runs the learner's work/sampling.lua
on each through harness.lua (this lab's own file) in LuaJIT, and checks that:

* the filter loads, defines a global `sample`, and never raises;
* it answers with Fluent Bit's codes -1 (drop) or 0 (keep) only, and hands back the
  timestamp and the record it was given, unchanged;
* every WARNING, ERROR and CRITICAL line is kept, and so is every line without a level (raw
  stderr);
* INFO and DEBUG lines without a trace id (startup lines, uvicorn's own, background work) are
  kept, or sampled by a stable function of the line: some kept, and a line seen twice (the
  records replay some) gets the same answer both times, as in deploy/fluent-bit/sampling.lua;
* INFO and DEBUG lines inside a trace are kept for 10% +- 1.5% of lines, with one decision per
  trace id, equal to OpenTelemetry's TraceIdRatioBased rule computed here in Python:
  keep when int(trace_id[16:], 16) < 0.1 * 2**64 (exact integers; the records include
  trace ids a few units either side of that bound, where a double loses the answer).
"""

from __future__ import annotations

import copy
import json
import random
import tempfile
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext

FILTER = "sampling.lua"
RATIO = 0.1
BOUND = 0.1 * 2**64  # a float equal to the integer 1844674407370955264 (0x1999999999999a00)
BOUND_INT = int(BOUND)
TOLERANCE = 0.015
SEED = 20261201
N_TRACES = 1400
ALWAYS_KEPT = ("warning", "error", "critical")
SAMPLED = ("debug", "info")

# Trace ids whose low 64 bits sit right at the bound: a filter that turns the hex into a
# Lua number (a double, 53 bits of precision) gets some of them wrong.
EDGE_OFFSETS = (-1, -2, -100, -127, 0, 1, 255)


def reference_keeps(trace_id: str) -> bool:
    """OpenTelemetry's TraceIdRatioBased rule at 10%, as the services apply it to INFO lines."""
    return int(trace_id[16:], 16) < BOUND


def _high_bits_keeps(trace_id: str) -> bool:
    return int(trace_id[:16], 16) < BOUND


def _double_keeps(trace_id: str) -> bool:
    return float(int(trace_id[16:], 16)) < BOUND


# --- realistic records ------------------------------------------------------------------------

SERVICES = {
    "preprocess": ("/v1/predict", "POST"),
    "classifier": ("/v2/models/{name}/infer", "POST"),
    "postprocess": ("/v1/postprocess", "POST"),
}
PODS = {
    "preprocess": "servescope-preprocess-7c9d5b8f6-x2kqp",
    "classifier": "servescope-classifier-5f6c8d9b7-9wzlm",
    "postprocess": "servescope-postprocess-6b7f9c5d4-hq4tn",
}


class Records:
    """Builds the record list; every record is (tag, timestamp, fields)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.clock = 1_796_112_000.0  # 2026-12-01T10:00:00Z
        self.items: list[tuple[str, float, dict[str, Any]]] = []

    def _iso(self) -> str:
        seconds = int(self.clock)
        micros = int((self.clock - seconds) * 1_000_000)
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"

    def add(self, service: str, fields: dict[str, Any], stream: str = "stdout") -> None:
        self.clock += self.rng.uniform(0.0005, 0.02)
        pod = PODS[service]
        container_id = f"{zlib.crc32(pod.encode()):08x}{zlib.crc32(service.encode()):08x}"
        record: dict[str, Any] = dict(fields)
        if "level" in record:
            record = {
                "timestamp": self._iso(),
                **record,
                "service": service,
                "version": "0.1.0",
            }
        record["stream"] = stream
        record["_p"] = "F"
        record["time"] = self._iso().replace("Z", "123Z")
        record["kubernetes"] = {
            "pod_name": pod,
            "namespace_name": "servescope",
            "container_name": service,
            "host": "minikube",
            "container_image": f"servescope-{service}:dev",
            "labels": {
                "app.kubernetes.io/name": "servescope",
                "app.kubernetes.io/component": service,
                "app.kubernetes.io/instance": "servescope",
                "pod-template-hash": pod.split("-")[2],
            },
        }
        tag = f"kube.var.log.containers.{pod}_servescope_{service}-{container_id}.log"
        self.items.append((tag, round(self.clock, 6), record))


def _span(rng: random.Random) -> str:
    return f"{rng.getrandbits(64):016x}"


def _trace_ids(rng: random.Random) -> list[str]:
    """Random W3C trace ids, exactly 10% of them under the bound, plus the edge cases."""
    kept = N_TRACES // 10
    ids = []
    for index in range(N_TRACES):
        low = rng.randrange(0, BOUND_INT) if index < kept else rng.randrange(BOUND_INT + 256, 2**64)
        ids.append(f"{rng.getrandbits(64):016x}{low:016x}")
    ids += [f"{rng.getrandbits(64):016x}{BOUND_INT + d:016x}" for d in EDGE_OFFSETS]
    rng.shuffle(ids)
    return ids


def build_records(seed: int = SEED) -> list[tuple[str, float, dict[str, Any]]]:
    rng = random.Random(seed)
    out = Records(seed)
    for service in SERVICES:
        out.add(
            service,
            {"level": "info", "event": "Started server process [1]", "logger": "uvicorn.error"},
        )
        out.add(
            service,
            {
                "level": "info",
                "event": "Waiting for application startup.",
                "logger": "uvicorn.error",
            },
        )
    out.add(
        "classifier",
        {
            "level": "info",
            "event": "model_loaded",
            "model_name": "digits",
            "model_version": "1",
            "sha256": "9f2c" * 16,
            "load_seconds": 0.412,
        },
    )
    out.add("postprocess", {"level": "info", "event": "model_cards_loaded", "models": ["digits"]})
    out.add("preprocess", {"level": "warning", "event": "waiting_for_classifier", "retry_in": 1.0})
    out.add(
        "preprocess",
        {
            "level": "info",
            "event": "model_metadata_loaded",
            "model_name": "digits",
            "model_version": "1",
        },
    )
    for service in SERVICES:
        out.add(
            service,
            {"level": "info", "event": "Application startup complete.", "logger": "uvicorn.error"},
        )

    for number, trace_id in enumerate(_trace_ids(rng)):
        kind = rng.random()
        debug = rng.random() < 0.3
        base = {"trace_id": trace_id}

        def access(service: str, status: int, ms: float, base: dict[str, str] = base) -> None:
            route, method = SERVICES[service]
            out.add(
                service,
                {
                    "level": "info",
                    "event": "http_request",
                    **base,
                    "span_id": _span(rng),
                    "http_route": route,
                    "http_request_method": method,
                    "http_response_status_code": status,
                    "duration_ms": round(ms, 3),
                },
            )

        if kind < 0.08:  # a bad upload: refused at the edge
            reason = rng.choice(
                ["undecodable_image", "image_too_small", "unsupported_media_type", "empty_body"]
            )
            out.add(
                "preprocess",
                {
                    "level": "warning",
                    "event": "request_rejected",
                    **base,
                    "span_id": _span(rng),
                    "kind": reason,
                    "stage": "decode",
                    "error": "the upload is not an image we can read",
                },
            )
            access(
                "preprocess", 415 if reason == "unsupported_media_type" else 400, rng.uniform(1, 4)
            )
        elif kind < 0.11:  # the classifier times out
            out.add(
                "classifier",
                {
                    "level": "error",
                    "event": "request_failed",
                    **base,
                    "span_id": _span(rng),
                    "kind": "inference_failed",
                    "stage": "infer",
                    "error": "inference failed",
                },
            )
            access("classifier", 500, rng.uniform(5, 40))
            out.add(
                "preprocess",
                {
                    "level": "error",
                    "event": "request_failed",
                    **base,
                    "span_id": _span(rng),
                    "kind": "error",
                    "stage": "classifier",
                    "error": "the classifier answered 500",
                },
            )
            access("preprocess", 502, rng.uniform(10, 60))
        elif kind < 0.115:  # a bug
            out.add(
                "postprocess",
                {
                    "level": "error",
                    "event": "unhandled_error",
                    **base,
                    "span_id": _span(rng),
                    "error_type": "KeyError",
                    "exception": 'Traceback (most recent call last):\n  File "/app/postprocess/app.py", line 88, in postprocess\n    label = card.labels[index]\nKeyError: 10',
                },
            )
            access("postprocess", 500, rng.uniform(1, 5))
            access("preprocess", 502, rng.uniform(10, 60))
        else:
            if debug:
                out.add(
                    "preprocess",
                    {
                        "level": "debug",
                        "event": "connect_tcp.started host='servescope-classifier' port=8001 local_address=None timeout=5.0",
                        "logger": "httpcore.connection",
                        **base,
                        "span_id": _span(rng),
                    },
                )
                out.add(
                    "preprocess",
                    {
                        "level": "debug",
                        "event": "send_request_headers.complete",
                        "logger": "httpcore.http11",
                        **base,
                        "span_id": _span(rng),
                    },
                )
            access("classifier", 200, rng.uniform(2, 15))
            access("postprocess", 200, rng.uniform(0.5, 3))
            if rng.random() < 0.02:
                out.add(
                    "preprocess",
                    {
                        "level": "critical",
                        "event": "event loop blocked for 1.2 s",
                        "logger": "asyncio",
                        **base,
                        "span_id": _span(rng),
                    },
                )
            access("preprocess", 200, rng.uniform(8, 40))
        if number % 97 == 0:  # a line from outside any request
            out.add(
                "classifier",
                {"level": "warning", "event": "model_metadata_refresh_failed", "error": "timeout"},
            )
        if number % 13 == 0:  # background work, outside any request
            out.add(
                "classifier",
                {
                    "level": "debug",
                    "event": "drift window",
                    "logger": "servescope.classifier.drift",
                },
            )
        if number % 211 == 0:  # raw stderr, not JSON: no level, no trace id
            out.add("postprocess", {"log": "Traceback (most recent call last):"}, stream="stderr")
    for service in SERVICES:
        out.add(
            service,
            {"level": "info", "event": "shutdown_started", "signal": "SIGTERM", "drain_seconds": 5},
        )
    # Fluent Bit replays a file after a restart: the same lines again, unchanged.
    replayed = [item for item in out.items if _untraced_sampled(item[2])][-40:]
    return out.items + [(tag, ts, copy.deepcopy(record)) for tag, ts, record in replayed]


def _untraced_sampled(record: dict[str, Any]) -> bool:
    return _level(record) in SAMPLED and not isinstance(record.get("trace_id"), str)


# --- records to Lua -------------------------------------------------------------------------


def _lua(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        escaped = []
        for byte in value.encode():
            char = chr(byte)
            if char in '"\\':
                escaped.append("\\" + char)
            elif 32 <= byte < 127:
                escaped.append(char)
            else:
                escaped.append(f"\\{byte:03d}")
        return '"' + "".join(escaped) + '"'
    if isinstance(value, list | tuple):
        return "{" + ", ".join(_lua(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{_lua(k)}] = {_lua(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def write_records(path: Path, items: list[tuple[str, float, dict[str, Any]]]) -> None:
    with path.open("w") as out:
        for tag, ts, record in items:
            out.write(f"{{tag = {_lua(tag)}, ts = {ts!r}, record = {_lua(record)}}}\n")


# --- the check ------------------------------------------------------------------------------


def _level(record: dict[str, Any]) -> str | None:
    level = record.get("level")
    return level.lower() if isinstance(level, str) else None


def _examples(items: list[str], limit: int = 3) -> str:
    return ", ".join(items[:limit]) + (
        f" (and {len(items) - limit} more)" if len(items) > limit else ""
    )


def check(ctx: CheckContext) -> None:
    lab_dir = ctx.root / "labs" / str(ctx.lab["id"])
    harness = lab_dir / "harness.lua"
    script = ctx.workspace / FILTER
    if not ctx.require(
        script.is_file(),
        f"{FILTER} exists in your workspace",
        f"create {FILTER} in {ctx.workspace} (`servescope lab start` copies a starter there)",
    ):
        return
    items = build_records()
    with tempfile.TemporaryDirectory(prefix="servescope-lab-") as tmp:
        records_path = Path(tmp) / "records.txt"
        results_path = Path(tmp) / "results.txt"
        write_records(records_path, items)
        run = ctx.luajit(harness, script, records_path, results_path)
        loaded = run.returncode == 0 and results_path.is_file()
        if not ctx.require(
            loaded,
            "LuaJIT loads your filter and finds the function `sample`",
            (run.stderr or run.stdout).strip()
            + ". Fluent Bit calls the function named in its config (`call sample`): define "
            "it as a global, `function sample(tag, timestamp, record) ... end` (not `local "
            f"function`), and try `luajit -e 'dofile(\"{FILTER}\")'` in your workspace to "
            "see Lua's own error",
        ):
            return
        lines = results_path.read_text().splitlines()
    if not ctx.require(
        len(lines) == len(items),
        "your filter answers every record",
        f"the harness got {len(lines)} answers for {len(items)} records; does the filter "
        "call os.exit or close stdout?",
    ):
        return

    errors: list[str] = []
    bad_codes: list[str] = []
    changed_ts = changed_record = 0
    kept: list[bool | None] = []
    for (_, _, record), line in zip(items, lines, strict=True):
        parts = line.split("\t")
        if parts[0] == "ERR":
            errors.append(
                f"{parts[1]} (record: level={record.get('level')!r}, trace_id={record.get('trace_id')!r})"
            )
            kept.append(None)
            continue
        code, ts_same, record_same = parts[1], parts[2] == "1", parts[3] == "1"
        if code not in ("-1", "0"):
            bad_codes.append(code)
            kept.append(None)
            continue
        kept.append(code == "0")
        if code == "0":
            changed_ts += not ts_same
            changed_record += not record_same

    ctx.require(
        not errors,
        "your filter never raises an error",
        f"{len(errors)} records raised: {_examples(sorted(set(errors)), 2)}. Fluent Bit logs the error and "
        "keeps going; find the field your code assumed (a line without `trace_id` or "
        'without `level`: check `type(x) == "string"` before using it)',
    )
    ctx.require(
        not bad_codes,
        "your filter answers with code -1 (drop) or 0 (keep unchanged) only",
        f"it returned {_examples(sorted(set(bad_codes)))}. In Fluent Bit's contract 1 and 2 "
        "mean 'I modified the record, use mine', which makes Fluent Bit re-encode every "
        "line; this filter only decides: -1 drops, 0 keeps as it was",
    )
    ctx.require(
        changed_ts == 0 and changed_record == 0,
        "your filter hands back the timestamp and the record it was given, unchanged",
        f"{changed_ts} timestamps and {changed_record} records came back different. Return "
        "`0, timestamp, record` with the very values you received and do not add, remove or "
        "rewrite fields (a sampling filter that edits lines is two jobs in one)",
    )

    always, no_level = [], []
    untraced: dict[str, list[bool]] = {}
    sampled: dict[str, list[bool]] = {}
    sampled_levels: dict[str, list[bool]] = {}
    for (_, _, record), decision in zip(items, kept, strict=True):
        if decision is None:
            continue
        level = _level(record)
        trace_id = record.get("trace_id")
        if level in ALWAYS_KEPT:
            if not decision:
                always.append(level)
        elif level not in SAMPLED:
            if not decision:
                no_level.append(str(level or "no level"))
        elif not isinstance(trace_id, str):
            untraced.setdefault(json.dumps(record, sort_keys=True), []).append(decision)
        else:
            sampled.setdefault(trace_id, []).append(decision)
            sampled_levels.setdefault(level, []).append(decision)

    ctx.require(
        not always,
        "every WARNING, ERROR and CRITICAL line is kept",
        f"{len(always)} were dropped ({', '.join(f'{lv}: {always.count(lv)}' for lv in ALWAYS_KEPT if lv in always)}). "
        "These are the lines people search for in an incident: keep them before looking "
        "at the trace id. Our lines carry the level in lower case in the `level` field "
        '(`"warning"`, `"error"`, `"critical"`); compare in lower case',
    )
    ctx.require(
        not no_level,
        "every line without a level is kept (a raw traceback on stderr)",
        f"{len(no_level)} were dropped. A line that is not JSON arrives with only `log`: "
        "there is no level to sample by, and it is usually a crash; keep it",
    )
    untraced_decisions = [d for values in untraced.values() for d in values]
    unstable = [key for key, values in untraced.items() if len(set(values)) > 1]
    ctx.require(
        bool(untraced_decisions) and not unstable and any(untraced_decisions),
        "INFO and DEBUG lines without a trace id (startup, shutdown, background work) are "
        "kept, or sampled by a stable function of the line",
        (
            f"{len(unstable)} lines got one answer and then another when seen again (Fluent "
            "Bit replays a file after a restart). Keep them all, as the services' own "
            "sampler does, or decide from the line itself, e.g. a hash of its timestamp and "
            "event (deploy/fluent-bit/sampling.lua), never math.random"
            if unstable
            else "your filter dropped all of them. They happen outside any request and explain "
            "restarts: keep them (the simplest, what the services' own sampler does, "
            "services/telemetry/src/servescope/telemetry/logging.py)"
        ),
    )

    decisions = [d for values in sampled.values() for d in values]
    share = sum(decisions) / len(decisions) if decisions else 0.0
    by_level = ", ".join(
        f"{lv} {100 * sum(v) / len(v):.1f}%" for lv, v in sorted(sampled_levels.items())
    )
    ctx.require(
        abs(share - RATIO) <= TOLERANCE,
        "about 10% (8.5-11.5%) of INFO and DEBUG lines inside a trace are kept",
        f"your filter kept {100 * share:.1f}% of them ({by_level}). "
        + (
            "It keeps everything: drop INFO/DEBUG lines whose trace is not sampled"
            if share > 0.99
            else "It keeps none: compare the low 64 bits of the trace id with 0.1 x 2^64"
            if share < 0.01
            else "Check the ratio (0.1) and the bound (0.1 x 2^64)"
        ),
    )
    mixed = [tid for tid, values in sampled.items() if len(set(values)) > 1]
    ctx.require(
        not mixed,
        "one decision per trace: all INFO/DEBUG lines of a trace are kept or all dropped",
        f"{len(mixed)} traces had some lines kept and some dropped (e.g. {mixed[0] if mixed else ''}). "
        "Decide from the trace id alone (no math.random, no counters), so every line "
        "of a request, in every service, gets the same answer and a kept trace in Jaeger has "
        "all its log lines",
    )
    wrong = sorted(
        tid
        for tid, values in sampled.items()
        if len(set(values)) == 1 and values[0] != reference_keeps(tid)
    )
    ctx.require(
        not wrong,
        "the decision for each trace id is OpenTelemetry's TraceIdRatioBased rule: keep "
        "when the low 64 bits of the trace id are below 0.1 x 2^64",
        _rule_hint(wrong, sampled) if wrong else "",
    )


def _rule_hint(wrong: list[str], sampled: dict[str, list[bool]]) -> str:
    decided = {tid: values[0] for tid, values in sampled.items() if len(set(values)) == 1}
    example = wrong[0]
    said = (
        f"{len(wrong)} of {len(decided)} traces got the other answer, e.g. trace_id "
        f"{example}: low 64 bits 0x{example[16:]} "
        f"{'<' if reference_keeps(example) else '>='} 0x{BOUND_INT:016x}, so it should be "
        f"{'kept' if reference_keeps(example) else 'dropped'}. "
    )
    if all(decided[t] == _high_bits_keeps(t) for t in decided):
        return said + (
            "Your filter reads the HIGH 64 bits (the first 16 hex characters); "
            "OpenTelemetry's rule reads the low 64 bits: trace_id:sub(17, 32)"
        )
    edge = {t for t in wrong if abs(int(t[16:], 16) - BOUND_INT) < 4096}
    if edge == set(wrong) or all(decided[t] == _double_keeps(t) for t in decided):
        return said + (
            "Only trace ids just below the bound are wrong: a Lua number is a double with "
            "53 bits of precision, so tonumber() of 16 hex digits rounds, and 0x"
            f"{BOUND_INT - 1:016x} becomes equal to the bound. Compare exact 64-bit integers: "
            "in LuaJIT, uint64_t cdata (`0ULL`), e.g. build the value from two 32-bit "
            "halves with tonumber(hex:sub(1, 8), 16) * 0x100000000ULL + tonumber(hex:sub(9, 16), 16), "
            "and the bound as 0x1999999999999A00ULL (round(0.1 x 2^64), what the services use)"
        )
    return said + (
        "Take the last 16 hex characters of trace_id (the low 64 bits), read them as an "
        "unsigned 64-bit integer, and keep the line when that is below 0.1 x 2^64 "
        "(0x1999999999999A00): the README's 'The rule' section walks through it"
    )
