"""A lab's background traffic: `python -m servescope.cli.labs.driver`, started by `lab start`.

Three things at once, until SIGTERM:

* the traffic generator (servescope.loadgen) at a steady rate with the lab's mix;
* with --probe URL (repeatable), a kubelet's probes: GET /healthz and /readyz every second,
  so probe requests sit in the metrics beside real traffic, as they do on Kubernetes;
* with --pulse "URL|STEP|DELAY|EVERY|FOR" (repeatable), a recurring fault: DELAY seconds on
  STEP of the service at URL for FOR seconds out of every EVERY ("*" is the service's first
  fault step, asked from its admin API). A flaky dependency, not a constant one.

On SIGTERM every pulse is switched off before the driver exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp

from servescope.loadgen.traffic import LoadConfig, run_load


async def _admin(
    session: aiohttp.ClientSession, url: str, token: str, method: str, path: str, body: object
) -> tuple[int, object]:
    async with session.request(
        method, url + path, json=body, headers={"Authorization": f"Bearer {token}"}
    ) as response:
        try:
            data = await response.json(content_type=None)
        except ValueError:
            data = None
        return response.status, data


async def _probe(session: aiohttp.ClientSession, urls: list[str]) -> None:
    while True:
        for url in urls:
            for path in ("/healthz", "/readyz"):
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(url + path) as response:
                        await response.read()
        await asyncio.sleep(1.0)


async def _pulse(session: aiohttp.ClientSession, spec: str, token: str) -> None:
    url, step, delay, every, duration = spec.split("|")
    if step == "*":
        status, body = await _admin(session, url, token, "GET", "/admin/faults", None)
        if status != 200 or not isinstance(body, dict) or not body.get("steps"):
            print(f"pulse: {url} has no fault steps ({status})", flush=True)
            return
        step = str(body["steps"][0])
    print(f"pulse: {url} step {step}: {delay} s for {duration} s every {every} s", flush=True)
    await asyncio.sleep(0.5)
    try:
        while True:
            await _admin(
                session, url, token, "PUT", f"/admin/faults/{step}", {"delay_seconds": float(delay)}
            )
            await asyncio.sleep(float(duration))
            await _admin(session, url, token, "PUT", f"/admin/faults/{step}", {"delay_seconds": 0})
            await asyncio.sleep(float(every) - float(duration))
    finally:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            await _admin(session, url, token, "PUT", f"/admin/faults/{step}", {"delay_seconds": 0})


async def _run(args: argparse.Namespace, token: str) -> None:
    config = LoadConfig(
        url=args.url,
        heldout_dir=Path(args.heldout_dir),
        rate=args.rate,
        duration=0,
        mix=args.mix,
        seed=args.seed,
    )
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel if task else lambda: None)
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        jobs: list[asyncio.Task[Any]] = [asyncio.create_task(run_load(config, progress=None))]
        if args.probe:
            jobs.append(asyncio.create_task(_probe(session, args.probe)))
        jobs += [asyncio.create_task(_pulse(session, spec, token)) for spec in args.pulse]
        print(
            f"lab traffic: {args.mix} at {args.rate:g}/s to {args.url}"
            + (f", probes on {len(args.probe)} services" if args.probe else ""),
            flush=True,
        )
        try:
            await asyncio.gather(*jobs)
        except asyncio.CancelledError:
            for job in jobs:
                job.cancel()
            # Let the pulses switch their faults off before the session closes.
            await asyncio.gather(*jobs, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m servescope.cli.labs.driver")
    parser.add_argument("--url", required=True, help="the edge")
    parser.add_argument("--rate", type=float, default=5.0)
    parser.add_argument("--mix", default="mixed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heldout-dir", required=True)
    parser.add_argument("--token-file")
    parser.add_argument("--probe", action="append", default=[], metavar="SERVICE_URL")
    parser.add_argument("--pulse", action="append", default=[], metavar="URL|STEP|DELAY|EVERY|FOR")
    args = parser.parse_args(argv)
    token = Path(args.token_file).read_text().strip() if args.token_file else ""
    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(_run(args, token))
    print("lab traffic stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
