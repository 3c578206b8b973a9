"""SIGTERM during a burst loses no in-flight request, at the edge and behind it."""

from __future__ import annotations

import http.client
import signal
import threading
import time
from dataclasses import dataclass, field

import httpx
import orjson
import pytest

from servescope.cli.local.services import LocalStack
from servescope.cli.paths import heldout_dir
from servescope.loadgen.inputs import heldout_samples

# A hang fails here, with every started process stopped, instead of stalling CI.
pytestmark = pytest.mark.timeout(90)

DRAIN_SECONDS = 1.0
BURST_SECONDS = 3.0
SIGTERM_AFTER = 0.5
CLIENT_THREADS = 8


@dataclass
class Outcome:
    started: float
    finished: float
    kind: str  # "ok", "refused", or a description of what went wrong
    detail: str = ""


@dataclass
class Burst:
    outcomes: list[Outcome] = field(default_factory=list)
    readyz: list[tuple[float, float, int | str]] = field(default_factory=list)  # start, end
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes.append(outcome)


def _one_request(port: int, body: bytes, label: str) -> Outcome:
    """One POST on a new connection, classified exactly: ok, refused, or what broke."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        try:
            conn.connect()
        except ConnectionRefusedError:
            return Outcome(started, time.monotonic(), "refused")
        try:
            conn.request(
                "POST",
                "/v1/predict",
                body=body,
                headers={"content-type": "image/png", "connection": "close"},
            )
            response = conn.getresponse()
            data = response.read()
        except Exception as exc:
            return Outcome(started, time.monotonic(), "broken", repr(exc))
        finished = time.monotonic()
        if response.status != 200:
            return Outcome(started, finished, f"status {response.status}", data[:300].decode())
        try:
            answer = orjson.loads(data)
        except orjson.JSONDecodeError:
            return Outcome(started, finished, "partial body", data[:300].decode())
        if answer.get("label") != label:
            return Outcome(started, finished, "wrong answer", data[:300].decode())
        return Outcome(started, finished, "ok")
    finally:
        conn.close()


def _get_readyz(port: int) -> int | str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/readyz")
        response = conn.getresponse()
        response.read()
        return response.status
    except ConnectionRefusedError:
        return "refused"
    except Exception as exc:
        return repr(exc)
    finally:
        conn.close()


@pytest.mark.slow
def test_sigterm_to_preprocess_loses_no_request(start_stack) -> None:
    stack: LocalStack = start_stack(
        env={"preprocess": {"SERVESCOPE_DRAIN_SECONDS": str(DRAIN_SECONDS)}}
    )
    preprocess = stack.services["preprocess"]
    port = preprocess.port
    digit = heldout_samples(heldout_dir())[0]
    burst = Burst()
    deadline = time.monotonic() + BURST_SECONDS

    def client() -> None:
        while time.monotonic() < deadline:
            outcome = _one_request(port, digit.body, digit.label)
            burst.add(outcome)
            if outcome.kind != "ok":
                time.sleep(0.02)  # do not spin on a closed port

    def probe() -> None:
        while time.monotonic() < deadline:
            started = time.monotonic()
            status = _get_readyz(port)
            burst.readyz.append((started, time.monotonic(), status))
            time.sleep(0.05)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENT_THREADS)]
    threads.append(threading.Thread(target=probe, daemon=True))
    for thread in threads:
        thread.start()
    time.sleep(SIGTERM_AFTER)
    sigterm_at = time.monotonic()
    preprocess.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(BURST_SECONDS + 15)
    assert not any(thread.is_alive() for thread in threads)
    assert preprocess.process is not None
    exit_code = preprocess.process.wait(timeout=15)

    outcomes = burst.outcomes
    lost = [o for o in outcomes if o.kind not in ("ok", "refused")]
    assert not lost, f"{len(lost)} of {len(outcomes)} requests lost: {lost[:5]}"
    ok = [o for o in outcomes if o.kind == "ok"]
    assert len([o for o in ok if o.started < sigterm_at]) >= CLIENT_THREADS
    assert [o for o in ok if o.started > sigterm_at], "nothing was served after the SIGTERM"
    refused = [o for o in outcomes if o.kind == "refused"]
    assert refused, "the listener never closed during the burst"
    assert all(o.started > sigterm_at for o in refused)

    # Readiness: 200 before the signal, 503 while draining, and predictions still served then.
    assert all(status == 200 for _, end, status in burst.readyz if end < sigterm_at)
    assert [status for _, end, status in burst.readyz if end < sigterm_at]
    # When a 503 came back, the service was already draining, so a prediction that started
    # after that answer started during the drain.
    not_ready = [end for _, end, status in burst.readyz if status == 503]
    assert not_ready, f"/readyz never answered 503 while draining: {burst.readyz}"
    assert not_ready[0] > sigterm_at
    assert any(o.started > not_ready[0] for o in ok), "no prediction served once not ready"
    assert exit_code == 0, preprocess.log_tail()


@pytest.mark.slow
def test_sigterm_to_classifier_loses_no_request(start_stack) -> None:
    stack: LocalStack = start_stack(
        env={"classifier": {"SERVESCOPE_DRAIN_SECONDS": str(DRAIN_SECONDS)}}
    )
    classifier = stack.services["classifier"]
    digit = heldout_samples(heldout_dir())[0]
    results: list[tuple[float, int, dict]] = []
    lock = threading.Lock()
    deadline = time.monotonic() + BURST_SECONDS

    def client() -> None:
        with httpx.Client(base_url=stack.url, timeout=10) as http:
            while time.monotonic() < deadline:
                started = time.monotonic()
                response = http.post(
                    "/v1/predict", content=digit.body, headers={"content-type": "image/png"}
                )
                with lock:
                    results.append((started, response.status_code, response.json()))
                if response.status_code != 200:
                    time.sleep(0.02)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(SIGTERM_AFTER)
    sigterm_at = time.monotonic()
    classifier.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(BURST_SECONDS + 15)
    assert not any(thread.is_alive() for thread in threads)
    assert classifier.process is not None
    exit_code = classifier.process.wait(timeout=15)

    before = [(status, body) for started, status, body in results if started < sigterm_at]
    after = [(status, body) for started, status, body in results if started >= sigterm_at]
    assert len(before) >= 4
    assert all(status == 200 for status, _ in before), [b for s, b in before if s != 200]
    assert all(body["label"] == digit.label for _, body in before)
    for status, body in after:
        assert status == 200 or (status == 503 and body["kind"] == "classifier_unavailable"), body
    assert any(status == 200 for status, _ in after), "the classifier did not serve while draining"
    assert any(status == 503 for status, _ in after), "the classifier never went away"
    assert exit_code == 0, classifier.log_tail()
    assert stack.services["preprocess"].running()


@pytest.mark.slow
def test_requests_of_a_second_in_flight_at_sigterm_and_mid_drain_both_complete(
    start_stack,
) -> None:
    """A shutdown that does not drain fails here; uvicorn's own 0.1 s grace would not."""
    drain, step = 2.0, 1.0
    stack: LocalStack = start_stack(
        env={
            "preprocess": {
                "SERVESCOPE_DRAIN_SECONDS": str(drain),
                "SERVESCOPE_FAULTS": f"delay:resize:{step}",
            }
        }
    )
    preprocess = stack.services["preprocess"]
    digit = heldout_samples(heldout_dir())[0]
    results: dict[str, Outcome] = {}

    def send(name: str) -> None:
        results[name] = _one_request(preprocess.port, digit.body, digit.label)

    before = threading.Thread(target=send, args=("in flight at SIGTERM",))
    before.start()
    time.sleep(0.3)  # the request is inside its one-second step
    preprocess.send_signal(signal.SIGTERM)
    time.sleep(drain / 2)
    during = threading.Thread(target=send, args=("sent halfway through the drain",))
    during.start()
    before.join(15)
    during.join(15)
    assert preprocess.process is not None
    exit_code = preprocess.process.wait(timeout=15)
    assert set(results) == {"in flight at SIGTERM", "sent halfway through the drain"}
    for name, outcome in results.items():
        assert outcome.kind == "ok", f"{name}: {outcome}"
        assert outcome.finished - outcome.started >= step  # it really was slow
    # The mid-drain request outlived the drain: the listener closed while it was in flight.
    assert (
        results["sent halfway through the drain"].finished
        > results["in flight at SIGTERM"].started + drain
    )
    assert exit_code == 0, preprocess.log_tail()
