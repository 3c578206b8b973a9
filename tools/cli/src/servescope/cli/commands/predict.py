"""`servescope predict IMAGE...`: classify image files through the running stack."""

from __future__ import annotations

import argparse
import mimetypes
from pathlib import Path

import orjson

from servescope.cli.local.services import DEFAULT_PORTS
from servescope.cli.output import say as _say


def cmd_predict(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.request
    from urllib.parse import quote

    failures = 0
    route = f"/v1/models/{quote(args.model, safe='')}/predict" if args.model else "/v1/predict"
    for path in args.images:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            _say(f"{path}: cannot read: {exc.strerror}")
            failures += 1
            continue
        content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
        request = urllib.request.Request(  # noqa: S310 (the user's own URL)
            args.url.rstrip("/") + f"{route}?top_k={args.top_k}",
            data=data,
            headers={"Content-Type": content_type},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=args.timeout) as response:  # noqa: S310
                answer = orjson.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                error = orjson.loads(body)
                _say(f"{path}: {exc.code} {error.get('kind')}: {error.get('error')}")
            except orjson.JSONDecodeError:
                _say(f"{path}: HTTP {exc.code}")
            failures += 1
            continue
        except (urllib.error.URLError, OSError) as exc:
            _say(f"{path}: cannot reach {args.url} ({exc}); is `servescope up` running?")
            failures += 1
            continue
        if args.json:
            _say(orjson.dumps({"file": path, **answer}).decode())
        else:
            others = ", ".join(f"{t['label']} {t['probability']:.3f}" for t in answer["top_k"][1:])
            _say(
                f"{path}: {answer['label']} (confidence {answer['confidence']:.3f}; "
                f"then {others}) [{answer['model_name']} v{answer['model_version']}]"
            )
    return 1 if failures else 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    predict = sub.add_parser("predict", help="classify image files through the running stack")
    predict.add_argument("images", nargs="+")
    predict.add_argument("--url", default=f"http://127.0.0.1:{DEFAULT_PORTS['preprocess']}")
    predict.add_argument("--top-k", type=int, default=3)
    predict.add_argument(
        "--model", help="a model of the served repository (default: the default model)"
    )
    predict.add_argument("--timeout", type=float, default=10.0)
    predict.add_argument("--json", action="store_true", help="print the raw JSON answers")
    predict.set_defaults(func=cmd_predict)
