"""`python -m servescope.postprocess`: run the postprocess service with settings from the environment."""

from __future__ import annotations

from servescope.postprocess.app import create_app
from servescope.postprocess.settings import Settings
from servescope.runtime.server import run_service


def main() -> None:
    run_service(create_app, Settings)


if __name__ == "__main__":
    main()
