"""`python -m servescope.responder`: run the alert responder with settings from the environment."""

from __future__ import annotations

from servescope.responder.app import create_app
from servescope.responder.settings import Settings
from servescope.runtime.server import run_service


def main() -> None:
    run_service(create_app, Settings)


if __name__ == "__main__":
    main()
