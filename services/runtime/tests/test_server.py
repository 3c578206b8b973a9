"""The draining server's listener hand-off, on real sockets."""

from __future__ import annotations

import socket

import pytest

from servescope.runtime.server import stop_queueing


def test_a_listener_that_stopped_queueing_keeps_its_queue_and_completes_no_new_connection() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        address = listener.getsockname()
        queued = socket.create_connection(address, timeout=1)
        stop_queueing(listener)
        accepted, _ = listener.accept()  # what the kernel completed before is still there
        queued.sendall(b"ping")
        assert accepted.recv(4) == b"ping"
        # A new SYN goes unanswered, so the connection is never completed and then reset when
        # the listener closes: the client retries and is refused instead.
        with pytest.raises(TimeoutError):
            socket.create_connection(address, timeout=0.3)
        accepted.close()
        queued.close()
