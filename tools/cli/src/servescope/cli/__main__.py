"""`python -m servescope.cli` is the `servescope` command."""

import sys

from servescope.cli.main import main

sys.exit(main())
