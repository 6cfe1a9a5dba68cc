"""`distill serve`: the one-line errors a user meets (the happy path serves every vLLM test, see conftest.served)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from conftest import require_venv, run_distill

from distill.serve import server
from distill.serve.server import ServeConfig, server_args
from pipelines.spec import SpecError


def one_line_error(result, starts: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith(starts), line
    return line


def test_server_args_carry_the_flags() -> None:
    cfg = ServeConfig(model="m", name="teacher", port=8100, reasoning_parser="deepseek_r1", max_num_seqs=32,
                      max_model_len=4096, dtype="bfloat16", seed=1, extra_args=["--enforce-eager"])
    args = server_args(cfg, 8101)
    assert args[:8] == ["--model", "m", "--served-model-name", "teacher", "--host", "127.0.0.1", "--port", "8101"]
    for flag, value in [("--reasoning-parser", "deepseek_r1"), ("--max-num-seqs", "32"), ("--max-model-len", "4096"),
                        ("--dtype", "bfloat16"), ("--seed", "1")]:
        assert args[args.index(flag) + 1] == value
    assert args[-1] == "--enforce-eager"
    assert "--runner" in server_args(cfg.model_copy(update={"task": "reward"}), 8100)


def test_missing_vllm_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(server, "VENV_PYTHON", tmp_path / "no-venv" / "bin" / "python")
    monkeypatch.setattr(server, "find_spec", lambda name: None)
    monkeypatch.setattr(server.shutil, "which", lambda name: None)
    with pytest.raises(SpecError, match=r"make setup-vllm"):
        server.vllm_python()


def test_busy_port(tmp_path: Path) -> None:
    require_venv(".venv-vllm", "setup-vllm")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_distill("serve", tmp_path, "--port", port, "--log-dir", tmp_path / "logs", check=False)
    one_line_error(result, f"error: --port: 127.0.0.1:{port} is busy")


def test_a_model_that_fails_to_load_names_the_error(tmp_path: Path) -> None:
    require_venv(".venv-vllm", "setup-vllm")
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "qwen2", "architectures": ["NoSuchModelForLM"]}))
    result = run_distill("serve", broken, "--port", _free(), "--log-dir", tmp_path / "logs", check=False,
                         timeout=600)
    line = one_line_error(result, "error: model: vLLM exited")
    assert str(broken) in line and "log:" in line


def _free() -> int:
    from distill.serve.server import free_port

    return free_port()
