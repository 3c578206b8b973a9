"""`python -m servescope.loadgen --heldout-dir DIR --url URL ...`: send traffic."""

import argparse
import sys

from servescope.loadgen.command import add_arguments, run

parser = argparse.ArgumentParser(prog="python -m servescope.loadgen", description=__doc__)
add_arguments(parser)
sys.exit(run(parser.parse_args()))
