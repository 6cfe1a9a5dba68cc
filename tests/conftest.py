"""Shared fixtures: a tiny local model, problem files, specs, and running the real `distill` CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
DISTILL = [sys.executable, "-m", "distill.cli"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Qwen2 with a locally trained tokenizer and a ChatML template."""
    from testing.tiny_model import build_tiny_model

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


def require_venv(name: str, setup: str) -> Path:
    """A project venv the test needs: skipped when missing, except in CI (where `make test` builds it)."""
    path = ROOT / name
    if not (path / "bin" / "python").exists():
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing in CI: `make {setup}` builds it (make test depends on it)")
        pytest.skip(f"{name} is missing: `make {setup}` builds it")
    return path


# Under `pytest -n 2 --dist loadgroup` (make test) every test that uses a session-wide vLLM teacher runs in one
# worker, so each server starts once per run rather than once per worker, and the tests of a module with a
# module-scoped fixture (the lab loop, a trained student) run in one worker, so that fixture is built once.
# The other tests go wherever a worker is free.
SHARED_SERVERS = {"vllm_teacher", "vllm_r1_teacher"}


def xdist_group(item: pytest.Item) -> str | None:
    if SHARED_SERVERS & set(getattr(item, "fixturenames", ())):
        return "vllm-teachers"
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs.values() if info is not None else ()
    if any(d.scope == "module" for chain in defs for d in chain):
        return item.module.__name__ if item.module is not None else None
    return None


def pytest_itemcollected(item: pytest.Item) -> None:
    # at collection, before xdist's pytest_collection_modifyitems turns the marker into the node id's group
    # suffix (a tryfirst modifyitems hook here still ran after it)
    group = xdist_group(item)
    if group is not None:
        item.add_marker(pytest.mark.xdist_group(group))


# --- a real vLLM server (CPU build in .venv-vllm) serving a tiny teacher trained here ------------------------

@contextmanager
def cache_lock(request: pytest.FixtureRequest, name: str) -> Iterator[Path]:
    """A folder of .pytest_cache held by one test process at a time: under pytest-xdist the first worker builds
    what is cached there (a trained teacher), the other waits and reuses it (train_teacher checks its recipe)."""
    import fcntl

    folder = request.config.cache.mkdir(name)
    with open(folder.parent / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield folder


@pytest.fixture(scope="session")
def lab_teacher(request: pytest.FixtureRequest) -> Path:
    """A tiny teacher trained on CPU (~1 min) that writes `<thought>` column sums; cached in .pytest_cache."""
    from lab.teacher import train_teacher

    with cache_lock(request, "lab-teacher-thought") as folder:
        return train_teacher(folder, steps=300, tag="thought")


@pytest.fixture(scope="session")
def lab_r1_teacher(request: pytest.FixtureRequest) -> Path:
    """The same task, R1-style: the teacher writes `<think>…</think>` whatever the prompt asks."""
    from lab.teacher import train_teacher

    with cache_lock(request, "lab-teacher-think") as folder:
        return train_teacher(folder, steps=300, tag="think")


@dataclass
class Served:
    base_url: str
    name: str
    model_dir: Path
    process: subprocess.Popen[str]
    output: list[str]


@contextmanager
def served(model_dir: Path, name: str, *args: str, log_dir: Path) -> Iterator[Served]:
    """`distill serve` as a user runs it; stopped with SIGTERM, which must stop every vLLM process."""
    require_venv(".venv-vllm", "setup-vllm")
    from distill.serve.server import free_port

    command = [*DISTILL, "serve", str(model_dir), "--name", name, "--port", str(free_port()), "--dtype", "float32",
               "--max-model-len", "1024", "--seed", "0", "--log-dir", str(log_dir), *args]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    output: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:  # until the server is ready (or the command fails)
        output.append(line)
        if line.startswith("ready:"):
            break
    match = re.search(r"--teacher-url (\S+)", "".join(output))
    if not match:
        process.wait(timeout=60)
        raise AssertionError(f"distill serve failed ({process.returncode}):\n{''.join(output)[-3000:]}")
    pids = [int(p) for p in re.findall(r"\(pid (\d+),", "".join(output))]
    try:
        yield Served(match.group(1), name, model_dir, process, output)
    finally:
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=120)
        output.append(rest)
        assert process.returncode == 0, "".join(output)[-2000:]
        assert "stopped" in rest
        from distill.serve.server import live_group_members

        assert pids and not any(live_group_members(pid) for pid in pids)  # every vLLM process is gone


@pytest.fixture(scope="session")
def vllm_teacher(lab_teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with served(lab_teacher, "lab-teacher", log_dir=tmp_path_factory.mktemp("vllm-logs")) as server:
        yield server


@pytest.fixture(scope="session")
def vllm_r1_teacher(lab_r1_teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with served(lab_r1_teacher, "lab-r1-teacher", "--reasoning-parser", "deepseek_r1",
                log_dir=tmp_path_factory.mktemp("vllm-logs")) as server:
        yield server


def lab_spec(path: Path, teacher: Served | tuple[str, str], n_problems: int = 12, seed: int = 3,
             verification: str = "math", **teacher_fields: Any) -> Path:
    """A spec over lab addition problems for a served lab teacher (or a (base_url, name) pair)."""
    from lab.tasks import SYSTEM_PROMPT, problems

    base_url, name = teacher if isinstance(teacher, tuple) else (teacher.base_url, teacher.name)
    source = write_jsonl(path.parent / f"{path.stem}-problems.jsonl", problems(n_problems, seed=seed))
    return write_spec(path, source, prompt={"system": SYSTEM_PROMPT}, dedupe={"enabled": False},
                      verification=verification,
                      teacher={"model": name, "base_url": base_url, "max_new_tokens": 64,
                               **teacher_fields})  # the served teacher is seeded (served(): distill serve --seed 0)


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
