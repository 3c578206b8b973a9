"""The argument parser's commands and defaults, and `predict` without a stack."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from servescope.cli import main as cli
from servescope.cli.commands import load, predict, up
from servescope.cli.local.services import DEFAULT_PORTS
from servescope.cli.paths import heldout_dir

DIGIT = heldout_dir() / "0000_7.png"


def test_up_defaults() -> None:
    args = cli.build_parser().parse_args(["up"])
    assert args.command == "up"
    assert args.func is up.cmd_up
    assert (args.port_preprocess, args.port_classifier, args.port_postprocess) == (
        DEFAULT_PORTS["preprocess"],
        DEFAULT_PORTS["classifier"],
        DEFAULT_PORTS["postprocess"],
    )
    assert args.rate == 2.0
    assert args.run_dir == ".run"
    assert args.timeout == 60.0


def test_up_options() -> None:
    args = cli.build_parser().parse_args(
        ["up", "--port-preprocess", "9000", "--rate", "0", "--run-dir", "/tmp/x"]
    )
    assert args.port_preprocess == 9000
    assert args.rate == 0.0
    assert args.run_dir == "/tmp/x"


def test_predict_defaults() -> None:
    args = cli.build_parser().parse_args(["predict", "a.png", "b.jpg"])
    assert args.func is predict.cmd_predict
    assert args.images == ["a.png", "b.jpg"]
    assert args.url == f"http://127.0.0.1:{DEFAULT_PORTS['preprocess']}"
    assert args.top_k == 3
    assert args.timeout == 10.0
    assert args.json is False


def test_load_defaults() -> None:
    args = cli.build_parser().parse_args(["load"])
    assert args.func is load.run
    assert args.url == f"http://127.0.0.1:{DEFAULT_PORTS['preprocess']}"
    assert (args.rate, args.duration, args.requests, args.concurrency) == (5.0, 10.0, 0, 8)
    assert (args.mix, args.bad_fraction, args.seed) == ("normal", 0.1, 0)


@pytest.mark.parametrize("mix", ["normal", "bad", "mixed"])
def test_load_mixes(mix: str) -> None:
    assert cli.build_parser().parse_args(["load", "--mix", mix]).mix == mix


@pytest.mark.parametrize(
    "argv", [[], ["launch"], ["predict"], ["load", "--mix", "chaos"], ["load", "--rate", "fast"]]
)
def test_invalid_command_lines_exit_2(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.build_parser().parse_args(argv)
    assert caught.value.code == 2


def test_predict_reports_unreadable_files_and_unreachable_stacks(tmp_path: Path, capsys) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # released: nothing listens here
    missing = tmp_path / "absent.png"
    code = cli.main(["predict", str(missing), str(DIGIT), "--url", f"http://127.0.0.1:{port}"])
    assert code == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{missing}: cannot read")
    assert out[1].startswith(f"{DIGIT}: cannot reach http://127.0.0.1:{port}")
