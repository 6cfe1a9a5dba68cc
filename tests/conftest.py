"""Shared fixtures: a tiny local model, problem files, specs, and running the real `distill` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")

ROOT = Path(__file__).resolve().parents[1]
DISTILL = [sys.executable, "-m", "pipelines.cli"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Qwen2 with a locally trained tokenizer and a ChatML template."""
    from pipelines.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_spec(path: Path, source: Path | str, **overrides: Any) -> Path:
    """A spec YAML for a local problems file; keyword sections (teacher=..., run=...) are merged in."""
    spec: dict[str, Any] = {
        "name": path.stem,
        "source": {"path": str(source), "problem_field": "question", "answer_field": "answer"},
        "teacher": {"backend": "openai", "model": "loopback-teacher", "base_url": "http://127.0.0.1:9/v1",
                    "num_samples": 2, "max_new_tokens": 128},
        "verification": "math",
        "run": {"batch_size": 4},
    }
    for key, value in overrides.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) and isinstance(spec.get(key), dict) else value
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def run_distill(*args: str, timeout: float = 300, env: dict[str, str] | None = None,
                check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess (distilabel starts its own processes)."""
    result = subprocess.run([*DISTILL, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                            cwd=ROOT, env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"distill {' '.join(map(str, args))} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result
