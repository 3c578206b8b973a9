"""local.py: ports, the tiny HTTP probe and how the local stack wires its services."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from servescope.cli.local.services import (
    SERVICES,
    LocalStack,
    LocalStackError,
    free_port,
    http_get,
    port_is_free,
)


def test_a_listening_port_is_not_free() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert port_is_free(port) is False
    assert port_is_free(port) is True


def test_free_port_can_be_bound() -> None:
    port = free_port()
    assert 0 < port < 65536
    assert port_is_free(port)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_http_get_on_a_closed_port_is_status_0() -> None:
    assert http_get(f"http://127.0.0.1:{free_port()}/readyz", timeout=0.5) == (0, b"")


def test_stack_wires_ports_and_urls(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SERVESCOPE_LOG_LEVEL", "debug")  # the caller's own: not inherited
    ports = {"preprocess": 18000, "classifier": 18001, "postprocess": 18002}
    stack = LocalStack(
        ports=ports,
        run_dir=tmp_path,
        env={"*": {"SERVESCOPE_LOG_FORMAT": "console"}, "classifier": {"SERVESCOPE_X": "1"}},
    )
    assert list(stack.services) == list(SERVICES)
    assert stack.url == "http://127.0.0.1:18000"
    for name, service in stack.services.items():
        assert service.port == ports[name]
        assert service.url == f"http://127.0.0.1:{ports[name]}"
        assert service.log_path == tmp_path / f"{name}.log"
        assert service.env["SERVESCOPE_PORT"] == str(ports[name])
        assert service.env["SERVESCOPE_CLASSIFIER_URL"] == "http://127.0.0.1:18001"
        assert service.env["SERVESCOPE_POSTPROCESS_URL"] == "http://127.0.0.1:18002"
        assert service.env["SERVESCOPE_LOG_FORMAT"] == "console"
        assert "SERVESCOPE_LOG_LEVEL" not in service.env
        assert ("SERVESCOPE_X" in service.env) == (name == "classifier")
        assert not service.running()


def test_check_ports_names_the_taken_one(tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        taken = server.getsockname()[1]
        ports = {"preprocess": free_port(), "classifier": taken, "postprocess": free_port()}
        stack = LocalStack(ports=ports, run_dir=tmp_path)
        with pytest.raises(LocalStackError) as caught:
            stack.check_ports()
    assert f"classifier ({taken})" in str(caught.value)
    assert f"preprocess ({ports['preprocess']})" not in str(caught.value)
    assert f"postprocess ({ports['postprocess']})" not in str(caught.value)


def test_stopping_a_stack_that_never_started_is_harmless(tmp_path: Path) -> None:
    stack = LocalStack(run_dir=tmp_path)
    assert stack.stop() == dict.fromkeys(reversed(SERVICES))
