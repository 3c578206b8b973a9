"""Peers for `servescope bench`: KServe and Seldon MLServer serving the bundled ONNX model.

Each peer is installed by the benchmark into its own virtual environment (uv venv and uv pip
without the project's settings, or python3 -m venv and pip where there is no uv), cached under the user's cache directory between runs and never inside the repository;
neither is a dependency of the project. A peer that fails to install or start is skipped
with a message, never failing the whole run. Every peer is bound to 127.0.0.1 on a free port
and serves the same OIP v2 JSON payload through a tiny model class written to a temp dir at
bench time, running onnxruntime with one thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from servescope.cli.local.process import free_port, http_get, stop_process

MODEL_NAME = "digits-cnn"
VENV_COMMAND = ("python3", "-m", "venv")


@dataclass(frozen=True)
class PeerSpec:
    name: str
    requirements: tuple[str, ...]


PEERS: dict[str, PeerSpec] = {
    "kserve": PeerSpec("kserve", ("kserve==0.21.*", "onnxruntime", "numpy")),
    # MLServer 1.7.1's worker does not start under uvloop >= 0.22.
    "mlserver": PeerSpec("mlserver", ("mlserver==1.7.1", "uvloop<0.22", "onnxruntime", "numpy")),
}

# Per peer: configuration name -> what differs from the shipped default.
PEER_CONFIGS: dict[str, dict[str, dict[str, str]]] = {
    "kserve": {"default": {}, "quiet": {"logging": "off", "grpc": "off", "workers": "1"}},
    "mlserver": {"default": {}, "quiet": {"parallel_workers": "0", "logging": "off"}},
}

KSERVE_MODEL = """
import sys

import grpc.aio._server
import numpy as np
import onnxruntime as ort
import uvicorn

# KServe binds 0.0.0.0 (HTTP) and [::] (gRPC) unconditionally: keep the bench on loopback.
_Config = uvicorn.Config


class _LoopbackConfig(_Config):
    def __init__(self, *args, **kwargs):
        kwargs["host"] = "127.0.0.1"
        super().__init__(*args, **kwargs)


uvicorn.Config = _LoopbackConfig
_add_port = grpc.aio._server.Server.add_insecure_port
grpc.aio._server.Server.add_insecure_port = lambda self, address: _add_port(
    self, address.replace("[::]", "127.0.0.1")
)

from kserve import Model, ModelServer, model_server  # noqa: E402
from kserve.protocol.infer_type import InferOutput, InferResponse  # noqa: E402


class Digits(Model):
    def __init__(self, name, path):
        super().__init__(name)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.ready = True

    def predict(self, payload, headers=None):
        x = payload.inputs[0].as_numpy().astype(np.float32, copy=False)
        (y,) = self.session.run(None, {self.input_name: x})
        output = InferOutput(self.output_name, list(y.shape), "FP32")
        output.set_data_from_numpy(y, binary_data=False)
        return InferResponse(
            model_name=self.name, infer_outputs=[output], response_id=payload.id
        )


if __name__ == "__main__":
    path = sys.argv.pop(1)
    ModelServer().start([Digits(model_server.args.model_name, path)])
"""

MLSERVER_MODEL = """
import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class Digits(MLModel):
    async def load(self):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        path = self.settings.parameters.uri
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        (y,) = self.session.run(None, {self.input_name: x})
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output(self.output_name, y)],
        )
"""


def cache_root() -> Path:
    """Where peer venvs are kept between runs: the user's cache, never the repository."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "servescope-bench"


def _venv_key(spec: PeerSpec) -> str:
    text = "\n".join((sys.version.split()[0], *spec.requirements))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class PeerInstall:
    spec: PeerSpec
    venv: Path | None = None
    version: str = ""
    skipped: str = ""  # why, when the peer cannot be measured

    @property
    def python(self) -> Path:
        assert self.venv is not None
        return self.venv / "bin" / "python"


def install_peer(
    spec: PeerSpec,
    root: Path | None = None,
    pip_command: list[str] | None = None,
    timeout: float = 900.0,
) -> PeerInstall:
    """The peer's venv (cached by its pins), or a PeerInstall saying why it was skipped.

    `pip_command` replaces the installer (tests use it to simulate a failure).
    """
    root = root or cache_root()
    venv = root / f"{spec.name}-{_venv_key(spec)}"
    marker = venv / "servescope-installed.json"
    result = PeerInstall(spec)
    if marker.exists():
        result.venv = venv
        result.version = json.loads(marker.read_text()).get("version", "")
        return result
    log = root / f"{venv.name}.install.log"
    try:
        shutil.rmtree(venv, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        with log.open("w") as out:
            uv = os.environ.get("UV") or shutil.which("uv")
            # uv when there is one: it installs kserve in seconds, and pip in minutes.
            create = [uv, "venv", "--quiet", "--no-config"] if uv else list(VENV_COMMAND)
            subprocess.run(
                [*create, str(venv)],
                check=True,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
            python = str(venv / "bin" / "python")
            installer = (
                [uv, "pip", "install", "--quiet", "--no-config", "--python", python] if uv else None
            )
            command = pip_command or installer or [python, "-m", "pip", "install", "--quiet"]
            subprocess.run(
                [*command, *spec.requirements],
                check=True,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
            version = subprocess.run(
                [python, "-c", f"import importlib.metadata as m; print(m.version({spec.name!r}))"],
                check=True,
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        shutil.rmtree(venv, ignore_errors=True)
        # The doc gets a short reason (no paths, no index hosts); the console gets the details.
        if isinstance(exc, subprocess.CalledProcessError):
            reason = f"exit code {exc.returncode}"
        elif isinstance(exc, subprocess.TimeoutExpired):
            reason = f"timed out after {timeout:.0f} s"
        else:
            reason = type(exc).__name__
        tail = ""
        with contextlib.suppress(OSError):
            tail = "\n".join(log.read_text(errors="replace").strip().splitlines()[-5:])
        print(f"bench: {spec.name} install failed ({exc}); log {log}:\n{tail}", flush=True)
        result.skipped = (
            f"{spec.name} skipped: install of {' '.join(spec.requirements)} failed ({reason})"
        )
        return result
    marker.write_text(json.dumps({"requirements": spec.requirements, "version": version}))
    result.venv = venv
    result.version = version
    return result


@dataclass
class PeerServer:
    """One peer configuration running on 127.0.0.1; `pids` are every process it spawned."""

    name: str
    port: int
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default_factory=Path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def infer_url(self) -> str:
        return f"{self.url}/v2/models/{MODEL_NAME}/infer"

    def pids(self) -> list[int]:
        """The server process and its descendants (MLServer's parallel workers)."""
        if self.process is None:
            return []
        found = [self.process.pid]
        index = 0
        while index < len(found):
            children = Path(f"/proc/{found[index]}/task/{found[index]}/children")
            with contextlib.suppress(OSError):
                found += [int(pid) for pid in children.read_text().split()]
            index += 1
        return found

    def stop(self) -> None:
        # Children first (by PID), then the parent, so no worker is left behind.
        for pid in reversed(self.pids()[1:]):
            with contextlib.suppress(OSError):
                os.kill(pid, 15)
        stop_process(self.process, timeout=10)


def _kserve_command(
    install: PeerInstall, workdir: Path, port: int, config: dict[str, str]
) -> list[str]:
    script = workdir / "kserve_digits.py"
    script.write_text(KSERVE_MODEL)
    command = [
        str(install.python),
        str(script),
        str(model_path()),
        f"--model_name={MODEL_NAME}",
        f"--http_port={port}",
        f"--grpc_port={free_port()}",
    ]
    # Quiet: no per-request latency log line, no access log (logging left unconfigured, so
    # INFO records are dropped early), no gRPC server, one worker.
    if config.get("logging") == "off":
        command += ["--enable_latency_logging=false", "--configure_logging=false"]
    if config.get("grpc") == "off":
        command.append("--enable_grpc=false")
    if "workers" in config:
        command.append(f"--workers={config['workers']}")
    return command


def _mlserver_command(
    install: PeerInstall, workdir: Path, port: int, config: dict[str, str]
) -> list[str]:
    folder = workdir / "mlserver"
    model_dir = folder / MODEL_NAME
    model_dir.mkdir(parents=True, exist_ok=True)
    (folder / "mlserver_digits.py").write_text(MLSERVER_MODEL)
    settings: dict[str, object] = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
    }
    if "parallel_workers" in config:
        settings["parallel_workers"] = int(config["parallel_workers"])
    if config.get("logging") == "off":  # no access log, MLServer's own logger at WARNING
        settings["debug"] = False
        settings["logging_settings"] = {
            "version": 1,
            "disable_existing_loggers": False,
            "loggers": {"mlserver": {"level": "WARNING"}, "uvicorn": {"level": "WARNING"}},
        }
    (folder / "settings.json").write_text(json.dumps(settings))
    (model_dir / "model-settings.json").write_text(
        json.dumps(
            {
                "name": MODEL_NAME,
                "implementation": "mlserver_digits.Digits",
                "parameters": {"uri": str(model_path())},
            }
        )
    )
    return [str(install.venv / "bin" / "mlserver"), "start", str(folder)]  # type: ignore[operator]


def model_path() -> Path:
    from servescope.cli.paths import bundled_model_dir

    return bundled_model_dir() / "digits-cnn.onnx"


def start_peer(
    install: PeerInstall, config_name: str, workdir: Path, timeout: float = 120.0
) -> tuple[PeerServer | None, str]:
    """(server, "") when ready to infer, else (None, why it was skipped)."""
    label = f"{install.spec.name} {config_name}"
    config = PEER_CONFIGS[install.spec.name][config_name]
    port = free_port()
    workdir = workdir / f"{install.spec.name}-{config_name}"
    workdir.mkdir(parents=True, exist_ok=True)
    if install.spec.name == "kserve":
        command = _kserve_command(install, workdir, port, config)
    else:
        command = _mlserver_command(install, workdir, port, config)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SERVESCOPE_", "OTEL_"))}
    env.pop("VIRTUAL_ENV", None)
    env["PYTHONPATH"] = str(workdir / "mlserver") if install.spec.name == "mlserver" else ""
    env["OMP_NUM_THREADS"] = "1"
    server = PeerServer(label, port, log_path=workdir / "server.log")
    with server.log_path.open("ab") as log:
        server.process = subprocess.Popen(
            command,
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + timeout
    ready = f"{server.url}/v2/models/{MODEL_NAME}/ready"
    while http_get(ready, timeout=0.5)[0] != 200:
        if server.process.poll() is not None or time.monotonic() > deadline:
            tail = "\n".join(server.log_path.read_text(errors="replace").strip().splitlines()[-8:])
            code = server.process.poll()
            server.stop()
            print(f"bench: {label} did not start; last lines of its log:\n{tail}", flush=True)
            reason = (
                f"exited with code {code}" if code is not None else f"not ready in {timeout:.0f} s"
            )
            return None, f"{label} skipped: did not become ready ({reason})"
        time.sleep(0.2)
    return server, ""
