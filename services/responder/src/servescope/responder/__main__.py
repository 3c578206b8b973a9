"""`python -m servescope.responder`: run the alert responder with settings from the environment."""

import sys

from servescope.responder.app import main

if __name__ == "__main__":
    sys.exit(main())
