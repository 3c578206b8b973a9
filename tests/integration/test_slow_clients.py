"""Clients that hold connections open without finishing a request (slowloris), and requests
with headers far past any sane size: neither stops the edge serving everyone else."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from servescope.cli.local.services import LocalStack
from servescope.cli.paths import heldout_dir
from servescope.loadgen.inputs import heldout_samples

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

SLOW_CLIENTS = 200


def test_two_hundred_slow_clients_do_not_stop_normal_traffic(start_stack) -> None:
    stack: LocalStack = start_stack()
    edge = stack.services["preprocess"]
    digit = heldout_samples(heldout_dir())[0]
    slow: list[socket.socket] = []
    try:
        for _ in range(SLOW_CLIENTS):
            sock = socket.create_connection(("127.0.0.1", edge.port), timeout=5)
            # A request line and one header, never finished: the server waits for the rest.
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: edge\r\nX-Slow: ")
            slow.append(sock)
        with httpx.Client(base_url=stack.url, timeout=10) as client:
            for round_number in range(3):
                for sock in slow:
                    sock.sendall(b"a")  # a byte now and then keeps each one alive
                for _ in range(20):
                    response = client.post(
                        "/v1/predict", content=digit.body, headers={"content-type": "image/png"}
                    )
                    assert response.status_code == 200, (round_number, response.text)
                time.sleep(0.5)
        assert edge.running()
    finally:
        for sock in slow:
            sock.close()


def test_headers_past_any_sane_size_are_refused_and_the_edge_goes_on(start_stack) -> None:
    stack: LocalStack = start_stack()
    digit = heldout_samples(heldout_dir())[0]
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        try:
            huge = client.post(
                "/v1/predict",
                content=digit.body,
                headers={"content-type": "image/png", "x-huge": "a" * 1_000_000},
            )
            refused: int | str = huge.status_code
        except httpx.TransportError as exc:  # the server may close instead of answering
            refused = type(exc).__name__
        assert refused != 200, "a 1 MB header was accepted"
        ok = client.post("/v1/predict", content=digit.body, headers={"content-type": "image/png"})
        assert ok.status_code == 200
