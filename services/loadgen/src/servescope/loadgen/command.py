"""The generator's command line, shared by `python -m servescope.loadgen` and `servescope load`."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from servescope.loadgen.popularity import DEFAULT_ZIPF_S, repository_models
from servescope.loadgen.traffic import MIXES, LoadConfig, LoadResult, run_load


def add_arguments(parser: argparse.ArgumentParser, url: str = "http://127.0.0.1:8000") -> None:
    parser.add_argument("--url", default=url)
    parser.add_argument("--rate", type=float, default=5.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds; 0 = until Ctrl-C")
    parser.add_argument("--requests", type=int, default=0, help="stop after this many; 0 = no cap")
    parser.add_argument("--concurrency", type=int, default=8, help="most requests in flight")
    parser.add_argument(
        "--mix", choices=MIXES, default="normal", help="drift: inverted, noisy, rotated digits"
    )
    parser.add_argument("--bad-fraction", type=float, default=0.1, help="bad share in mixed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--heldout-dir", type=Path, help="the model's held-out digits (labels.csv and PNGs)"
    )
    models = parser.add_mutually_exclusive_group()
    models.add_argument(
        "--models",
        type=lambda text: [name for name in text.split(",") if name],
        default=[],
        help="comma-separated model names, most popular first: requests go to "
        "/v1/models/NAME/predict (default: every request to /v1/predict, the default model)",
    )
    models.add_argument(
        "--model-repository",
        type=Path,
        help="spread requests over every model of this model repository (sorted by name)",
    )
    parser.add_argument(
        "--zipf-s",
        type=float,
        default=DEFAULT_ZIPF_S,
        help="popularity skew over the models: the k-th gets a share of 1/k**s (0 = uniform)",
    )


def run(args: argparse.Namespace) -> int:
    if args.heldout_dir is None:
        print("error: --heldout-dir is required (the model's held-out digits)", file=sys.stderr)
        return 2
    if args.zipf_s < 0:
        print("error: --zipf-s must be >= 0", file=sys.stderr)
        return 2
    models: list[str] = args.models
    if args.model_repository is not None:
        try:
            models = repository_models(args.model_repository)
        except ValueError as exc:
            print(f"error: --model-repository: {exc}", file=sys.stderr)
            return 2
    config = LoadConfig(
        url=args.url,
        heldout_dir=args.heldout_dir,
        rate=args.rate,
        duration=args.duration,
        requests=args.requests,
        concurrency=args.concurrency,
        mix=args.mix,
        bad_fraction=args.bad_fraction,
        seed=args.seed,
        models=models,
        zipf_s=args.zipf_s,
    )
    print(
        f"sending {config.mix} traffic to {config.url} at {config.rate}/s "
        + (f"for {config.duration:g} s" if config.duration else "until Ctrl-C")
        + (f" (at most {config.requests} requests)" if config.requests else "")
        + (f" over {len(models)} models (Zipf s={config.zipf_s:g})" if models else ""),
        flush=True,
    )
    result = LoadResult()
    asyncio.run(_until_stopped(config, result))
    print(result.summary(), flush=True)
    return 0


async def _until_stopped(config: LoadConfig, result: LoadResult) -> None:
    """Run the load; SIGINT or SIGTERM ends it early and still leaves a summary."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Set explicitly: a child started from a script may inherit SIGINT as ignored.
        loop.add_signal_handler(sig, task.cancel if task else lambda: None)
    try:
        await run_load(config, sys.stderr, result)
    except asyncio.CancelledError:
        print("", flush=True)
