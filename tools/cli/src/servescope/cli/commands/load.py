"""`servescope load`: send traffic (normal digits, bad inputs, drift, or a mix)."""

from __future__ import annotations

import argparse

from servescope.cli.local.services import DEFAULT_PORTS
from servescope.cli.paths import heldout_dir
from servescope.loadgen.command import add_arguments, run


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    load = sub.add_parser("load", help="send traffic: normal digits, bad inputs, or a mix")
    add_arguments(load, url=f"http://127.0.0.1:{DEFAULT_PORTS['preprocess']}")
    load.set_defaults(func=run, heldout_dir=heldout_dir())
