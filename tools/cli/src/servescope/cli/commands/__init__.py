"""One module per `servescope` subcommand, each with `register(subparsers)`.

To add a subcommand: write commands/<name>.py with a `register` that adds its parser and
sets `func`, and list the module in COMMANDS.
"""

from __future__ import annotations

COMMANDS = (
    "up",
    "predict",
    "load",
    "fault",
    "trace",
    "slo",
    "responder",
    "stack",
    "dashboards",
    "generate",
    "bench",
    "cost",
    "soak",
    "lab",
    "models",
)
