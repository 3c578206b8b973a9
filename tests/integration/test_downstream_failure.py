"""A downstream that dies or hangs: the edge answers fast with the documented error, and heals."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from servescope.cli.paths import heldout_dir
from servescope.loadgen.inputs import heldout_samples

# A hang fails here, with every started process stopped, instead of stalling CI.
pytestmark = pytest.mark.timeout(90)

CLASSIFIER_TIMEOUT_SECONDS = 2.0
POSTPROCESS_TIMEOUT_SECONDS = 0.5


@dataclass
class Answer:
    started: float
    elapsed: float
    status: int
    body: dict


def _predict(client: httpx.Client) -> Answer:
    digit = heldout_samples(heldout_dir())[0]
    started = time.monotonic()
    response = client.post(
        "/v1/predict", content=digit.body, headers={"content-type": digit.content_type}
    )
    elapsed = time.monotonic() - started
    return Answer(started, elapsed, response.status_code, response.json())


@pytest.mark.slow
def test_classifier_killed_then_restarted(start_stack) -> None:
    stack = start_stack(
        env={
            "preprocess": {"SERVESCOPE_CLASSIFIER_TIMEOUT_SECONDS": str(CLASSIFIER_TIMEOUT_SECONDS)}
        }
    )
    classifier = stack.services["classifier"]
    answers: list[Answer] = []
    stop = threading.Event()
    kill_window: list[float] = []  # from the SIGKILL to the process being reaped

    def traffic() -> None:
        with httpx.Client(base_url=stack.url, timeout=10) as client:
            deadline = time.monotonic() + 10
            while not stop.is_set() and time.monotonic() < deadline:
                answers.append(_predict(client))
                time.sleep(0.01)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        time.sleep(0.5)
        kill_window.append(time.monotonic())
        assert classifier.stop(timeout=5, sig=signal.SIGKILL) == -signal.SIGKILL
        kill_window.append(time.monotonic())
        time.sleep(1.5)
    finally:
        stop.set()
        sender.join(15)
    assert not sender.is_alive()

    killed, dead = kill_window
    before = [a for a in answers if a.started + a.elapsed < killed]
    after = [a for a in answers if a.started > dead]
    assert len(before) >= 3
    assert all(a.status == 200 for a in before), [a.body for a in before if a.status != 200]
    assert len(after) >= 5
    for answer in after:
        assert answer.status == 503, answer.body
        assert answer.body["kind"] == "classifier_unavailable"
        assert answer.body["stage"] == "classifier"
        assert isinstance(answer.body["error"], str)
    # Every answer, including one in flight at the kill, is either a success or that 503.
    for answer in answers:
        assert answer.status == 200 or answer.body["kind"] == "classifier_unavailable", answer.body
    slowest = max(a.elapsed for a in answers)
    assert slowest < 1.0, f"slowest answer took {slowest:.3f} s"
    assert stack.services["preprocess"].running()

    # Restart it on the same port: predictions recover without touching preprocess.
    classifier.start()
    stack.wait_ready(20, ("classifier",))
    restarted = time.monotonic()
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        recovered = None
        while time.monotonic() - restarted < 5:
            answer = _predict(client)
            if answer.status == 200:
                recovered = answer
                break
            assert answer.body["kind"] == "classifier_unavailable", answer.body
            time.sleep(0.05)
        assert recovered is not None, "no 200 within 5 s of the classifier being ready again"
        assert recovered.body["label"] == heldout_samples(heldout_dir())[0].label
        assert all(_predict(client).status == 200 for _ in range(5))


class SilentServer:
    """A real TCP server on 127.0.0.1 that accepts connections, reads, and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self.connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                conn, _ = self.sock.accept()
                conn.setblocking(False)
                self.connections.append(conn)
                self.accepted += 1
            for conn in self.connections:  # drain what arrives, say nothing
                with contextlib.suppress(BlockingIOError, OSError):
                    conn.recv(65536)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self.connections:
            conn.close()
        self.sock.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.slow
def test_postprocess_that_never_answers_times_out(start_stack, silent_server) -> None:
    stack = start_stack(
        env={
            "preprocess": {
                "SERVESCOPE_POSTPROCESS_URL": f"http://127.0.0.1:{silent_server.port}",
                "SERVESCOPE_POSTPROCESS_TIMEOUT_SECONDS": str(POSTPROCESS_TIMEOUT_SECONDS),
            }
        }
    )
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        answers = [_predict(client) for _ in range(4)]
        for answer in answers:
            assert answer.status == 504, answer.body
            assert answer.body["kind"] == "postprocess_timeout"
            assert answer.body["stage"] == "postprocess"
            assert isinstance(answer.body["error"], str)
            assert POSTPROCESS_TIMEOUT_SECONDS * 0.9 <= answer.elapsed < 1.5, answer.elapsed
        # The edge itself stays healthy: it is the downstream that is slow.
        assert client.get("/readyz").status_code == 200
    assert silent_server.accepted >= 1
    assert stack.services["preprocess"].running()
