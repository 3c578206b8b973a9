"""Reference solution: point the edge at the port the classifier really listens on, restart."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext


def solve(ctx: CheckContext) -> None:
    env_file = ctx.workspace / "preprocess.env"
    fixed = f"SERVESCOPE_CLASSIFIER_URL={ctx.urls['classifier']}"
    text = env_file.read_text()
    text, count = re.subn(r"(?m)^SERVESCOPE_CLASSIFIER_URL=.*$", fixed, text)
    env_file.write_text(text if count else text + fixed + "\n")
    ctx.restart()
