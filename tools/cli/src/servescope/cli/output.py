"""How the CLI talks to its user: one line at a time, flushed, so progress shows at once."""

from __future__ import annotations


def say(message: str) -> None:
    print(message, flush=True)
