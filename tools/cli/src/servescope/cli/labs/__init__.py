"""Labs: staged exercises that set up a broken or unfinished state, let the learner do the
work, and grade the real result (`servescope lab ...`).

The format of a lab folder is in servescope.cli.labs.model; what a checker receives is
`CheckContext` (servescope.cli.labs.context); the commands are servescope.cli.labs.runner.
Checkers import what they need from here:

    from servescope.cli.labs import CheckContext
"""

from __future__ import annotations

from servescope.cli.labs.context import (
    CheckContext,
    Criterion,
    MissingTool,
    QueryError,
    Response,
    Sample,
)
from servescope.cli.labs.model import (
    NEEDS,
    STAGES,
    Lab,
    LabError,
    LabFormatError,
    Pulse,
    Traffic,
    discover,
    find,
    load_lab,
)
from servescope.cli.labs.processes import NOT_TRAFFIC, Ports

__all__ = [
    "NEEDS",
    "NOT_TRAFFIC",
    "STAGES",
    "CheckContext",
    "Criterion",
    "Lab",
    "LabError",
    "LabFormatError",
    "MissingTool",
    "Ports",
    "Pulse",
    "QueryError",
    "Response",
    "Sample",
    "Traffic",
    "discover",
    "find",
    "load_lab",
]
