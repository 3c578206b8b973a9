"""`python -m servescope.preprocess`: run the preprocess service with settings from the environment."""

from __future__ import annotations

from servescope.preprocess.app import create_app
from servescope.preprocess.settings import Settings
from servescope.runtime.server import run_service


def main() -> None:
    run_service(create_app, Settings)


if __name__ == "__main__":
    main()
