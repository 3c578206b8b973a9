"""`servescope models build`: a model repository of N distinct small models (no PyTorch)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from servescope.cli.output import say as _say


def cmd_models_build(args: argparse.Namespace) -> int:
    from servescope.cli.model_repository import BuildError, build_repository
    from servescope.cli.paths import model_repository_dir

    out = Path(args.out) if args.out else model_repository_dir()
    try:
        build_repository(out, args.count, args.seed, args.jobs, progress=_say)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = sub.add_parser("models", help="build a model repository for the classifier")
    actions = models.add_subparsers(dest="action", required=True)
    build = actions.add_parser(
        "build",
        help="digits-cnn plus N-1 scikit-learn models (ONNX, each with its model card)",
        description="Serve the result with SERVESCOPE_MODEL_REPOSITORY=DIR on the classifier.",
    )
    build.add_argument(
        "--count", type=int, default=50, metavar="N", help="models, digits-cnn included"
    )
    build.add_argument("--out", metavar="DIR", help="directory to (re)write; default build/models")
    build.add_argument(
        "--seed", type=int, default=0, metavar="S", help="random_state of every estimator"
    )
    build.add_argument(
        "--jobs",
        type=int,
        metavar="J",
        help="worker processes (same files for any J); default: one per CPU",
    )
    build.set_defaults(func=cmd_models_build)
