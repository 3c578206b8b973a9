"""`python -m servescope.loadgen` is the `servescope` command."""

import sys

from servescope.loadgen.cli import main

sys.exit(main())
