"""Run untrusted Python in a sandbox: its own process group and temp dir, resource limits, no network.

The strongest isolation this machine allows, chosen once per process:

- ``namespaces`` (root, ``unshare`` works): the child is PID 1 of fresh network, PID and mount namespaces
  (``unshare --net --pid --mount --fork --kill-child``). The network namespace has only a downed loopback, so
  no connection leaves it, not even to 127.0.0.1; /tmp, /var/tmp and /dev/shm are private size-limited tmpfs;
  when PID 1 ends the kernel kills every process left in the namespace, including ones that called setsid().
- ``fallback`` (no namespaces): a new session and process group, which is killed afterwards. There is no
  network isolation at the OS level here, and when the interpreter lives in a folder ``nobody`` cannot enter
  (a pyenv Python under /root) the child even stays root: the Python guard below is then the only line against
  sockets, signals and writes (tests/test_sandbox.py checks that it holds). ``code.isolation: namespaces`` makes
  a run refuse to start without namespaces; ``auto`` logs a warning once when it falls back.

In both, the child runs in a fresh temp dir with a scrubbed environment (no secrets: only PATH, LANG, HOME=the
temp dir), with CPU-time, address-space, file-size, open-file and process-count limits, as the unprivileged
``nobody`` user when the factory runs as root (RLIMIT_NPROC is not enforced for root, and ``nobody`` cannot
signal or read our processes), and with an audit-hook guard (``sandbox_child.py``) that refuses sockets,
subprocesses, signals to other processes, ctypes and writes outside the temp dir. The wall-clock limit is the
parent's: past it the whole process group is killed with SIGKILL. ``evaluate``'s code_eval (human-eval's
execution.py) relies on the Python-level guard alone, open-r1 on remote sandboxes (E2B, Piston); this module
puts OS limits first and keeps the guard as a second line.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

CHILD = Path(__file__).with_name("sandbox_child.py")
NOBODY = (65534, 65534)
Isolation = Literal["auto", "namespaces", "fallback"]


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0
    cpu_s: int = 5
    memory_mb: int = 1024
    file_mb: int = 16
    processes: int = 32
    output_chars: int = 4000  # the tail of stdout+stderr kept for the outcome


@dataclass(frozen=True)
class Outcome:
    passed: bool
    status: str  # passed | failed | timeout | killed (by a signal) | setup_error
    returncode: int | None
    output: str  # the tail of the program's stdout and stderr
    isolation: str  # namespaces | fallback


@functools.lru_cache(maxsize=1)
def namespaces_available() -> bool:
    """Whether ``unshare --net --pid --mount --fork`` works here (root in a container that allows it)."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        return False
    try:
        probe = subprocess.run([unshare, "--net", "--pid", "--mount", "--fork", "--kill-child", "true"],
                               capture_output=True, timeout=10, env={"PATH": os.defpath})
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


@functools.lru_cache(maxsize=1)
def _warn_fallback() -> None:
    logging.getLogger("distill").warning(
        "code sandbox: no network/PID/mount namespaces here (needs root and `unshare`); untrusted code runs with "
        "rlimits, its own process group and the Python guard only")


def _command(config_path: Path, namespaces: bool) -> list[str]:
    python = [sys.executable, "-I", "-B", str(CHILD), str(config_path)]
    if not namespaces:
        return python
    return [shutil.which("unshare") or "unshare", "--net", "--pid", "--mount", "--fork",
            "--kill-child=SIGKILL", "--", *python]


def _kill_group(pgid: int, patience_s: float = 5.0) -> None:
    """SIGKILL the whole process group and wait (briefly) until none of it is left."""
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.01)


def run_python(program: str, limits: Limits = Limits(), isolation: Isolation = "auto",
               guard: bool = True) -> Outcome:
    """Run ``program`` (Python source) in the sandbox; passed when it runs to its end with exit status 0."""
    use_namespaces = isolation == "namespaces" or (isolation == "auto" and namespaces_available())
    if isolation == "namespaces" and not namespaces_available():
        raise RuntimeError("code.isolation: namespaces are not available here (needs root and a working "
                           "`unshare --net --pid --mount`); use isolation: auto or fallback")
    mode = "namespaces" if use_namespaces else "fallback"
    if not use_namespaces and isolation == "auto":
        _warn_fallback()
    root = Path(tempfile.mkdtemp(prefix="distill-sandbox-"))
    try:
        workdir = root / "work"
        workdir.mkdir()
        (workdir / "solution.py").write_text(program, encoding="utf-8")
        config = {"workdir": str(workdir), "namespaces": use_namespaces,
                  "guard": guard, "cpu_s": limits.cpu_s, "memory_mb": limits.memory_mb, "file_mb": limits.file_mb,
                  "processes": limits.processes, "uid": NOBODY[0], "gid": NOBODY[1]}
        config_path = root / "config.json"
        config_path.write_text(json.dumps(config), encoding="utf-8")
        if os.geteuid() == 0:  # the child drops to nobody: it may read root/ and write only in work/
            os.chmod(root, 0o755)
            os.chown(workdir, *NOBODY)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(workdir), "PYTHONIOENCODING": "utf-8"}
        with tempfile.TemporaryFile() as output:  # a file, not a pipe: RLIMIT_FSIZE bounds it, nothing blocks
            process = subprocess.Popen(_command(config_path, use_namespaces), stdin=subprocess.DEVNULL,
                                       stdout=output, stderr=subprocess.STDOUT, cwd=workdir, env=env,
                                       start_new_session=True)
            try:
                returncode: int | None = process.wait(timeout=limits.wall_s)
            except subprocess.TimeoutExpired:
                returncode = None
            finally:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                _kill_group(process.pid)  # whatever is left of the group (the namespace dies with its PID 1)
            output.seek(0, os.SEEK_END)
            size = output.tell()
            output.seek(max(0, size - limits.output_chars * 4))
            text = output.read().decode("utf-8", errors="replace")[-limits.output_chars:]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if returncode is None:
        return Outcome(False, "timeout", None, text, mode)
    if returncode == 0:
        return Outcome(True, "passed", 0, text, mode)
    if returncode < 0 or (use_namespaces and returncode > 128):  # unshare reports a signal as 128 + number
        return Outcome(False, "killed", returncode, text, mode)
    if returncode == 4 and "sandbox set-up failed" in text:
        return Outcome(False, "setup_error", returncode, text, mode)
    return Outcome(False, "failed", returncode, text, mode)
