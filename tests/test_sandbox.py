"""The code sandbox against hostile snippets, each once with the Python guard off so that the OS layer alone
must hold (the guard is a second line), and the pass/fail rules on ordinary programs."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from pathlib import Path

import pytest

from pipelines.verifiers.sandbox import Limits, namespaces_available, run_python

FAST = Limits(wall_s=8, cpu_s=2, memory_mb=512, processes=16)
BOTH = pytest.mark.parametrize("guard", [True, False], ids=["guard", "os-only"])


def _sandbox_processes() -> list[int]:
    """Processes still running the sandbox's child script (forked children keep their parent's command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"sandbox_child.py" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_ordinary_programs() -> None:
    assert run_python("def f(x):\n    return x + 1\nassert f(1) == 2\nprint('ok')").status == "passed"
    failed = run_python("def f(x):\n    return x\nassert f(1) == 2")
    assert (failed.passed, failed.status) == (False, "failed") and "AssertionError" in failed.output
    syntax = run_python("def f(:\n  pass")
    assert syntax.status == "failed" and "SyntaxError" in syntax.output


@BOTH
def test_exiting_early_is_not_a_pass(guard: bool) -> None:
    outcome = run_python("import sys\nsys.exit(0)\nassert False", guard=guard)
    assert outcome.status == "failed" and "exited before its tests finished" in outcome.output
    hard_exit = run_python("import os\nos._exit(0)\nassert False", guard=guard)
    # without the guard, exit status 0 from os._exit is all the OS can see
    assert hard_exit.passed is (not guard)


@BOTH
def test_infinite_loop_is_stopped_by_the_cpu_limit(guard: bool) -> None:
    outcome = run_python("while True:\n    pass", Limits(wall_s=20, cpu_s=1), guard=guard)
    assert not outcome.passed and outcome.status == "killed"


def test_sleeping_forever_is_stopped_by_the_wall_clock() -> None:
    outcome = run_python("import time\ntime.sleep(600)", Limits(wall_s=1.5, cpu_s=5))
    assert (outcome.passed, outcome.status, outcome.returncode) == (False, "timeout", None)


@BOTH
def test_fork_bomb_is_capped_and_every_child_killed(guard: bool) -> None:
    bomb = ("import os, time\nn = 0\n"
            "for _ in range(200):\n"
            "    try:\n        if os.fork() == 0:\n            time.sleep(600)\n        n += 1\n"
            "    except OSError:\n        break\n"
            "print('forked', n, flush=True)\nassert n < 100\ntime.sleep(600)")
    outcome = run_python(bomb, Limits(wall_s=3, cpu_s=2, processes=16), guard=guard)
    assert not outcome.passed
    forked = int(outcome.output.split("forked", 1)[1].split()[0])
    if guard:
        assert forked == 0
    else:  # RLIMIT_NPROC for the nobody user stops it well below 200
        assert 0 < forked < 16
    assert _sandbox_processes() == []


@BOTH
def test_memory_blow_up_fails(guard: bool) -> None:
    outcome = run_python("chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 * 1024))",
                         Limits(wall_s=20, cpu_s=5, memory_mb=256), guard=guard)
    assert not outcome.passed and "MemoryError" in outcome.output


@BOTH
def test_network_connect_fails(guard: bool) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    accepted: list[object] = []

    def accept() -> None:
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    port = server.getsockname()[1]
    snippet = (f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
               "s.sendall(b'leak')\nprint('connected')")
    try:
        outcome = run_python(snippet, FAST, guard=guard)
        thread = threading.Thread(target=accept)
        thread.start()
        thread.join()
    finally:
        server.close()
    assert not outcome.passed and "connected" not in outcome.output and accepted == []
    if not guard and namespaces_available():  # only a downed loopback in the fresh network namespace
        assert "Network is unreachable" in outcome.output or "Errno 101" in outcome.output


@BOTH
def test_writes_outside_the_temp_dir_do_not_land(guard: bool, tmp_path: Path) -> None:
    host_tmp = Path("/tmp") / f"sandbox-escape-{uuid.uuid4().hex}"
    here = tmp_path / "escape.txt"
    os.chmod(tmp_path, 0o777)  # even a world-writable folder of ours
    snippet = (f"for path in [{str(host_tmp)!r}, {str(here)!r}, '/work/escape.txt', 'inside.txt']:\n"
               "    try:\n        open(path, 'w').write('x')\n        print('wrote', path)\n"
               "    except OSError as exc:\n        print('refused', path, type(exc).__name__)\n")
    outcome = run_python(snippet, FAST, guard=guard)
    assert outcome.passed and "wrote inside.txt" in outcome.output
    assert not host_tmp.exists() and not Path("/work/escape.txt").exists()
    if namespaces_available() or guard:
        assert not here.exists()


@BOTH
def test_environment_secrets_are_out_of_reach(guard: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = f"sk-{uuid.uuid4().hex}"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("HF_TOKEN", secret)
    snippet = (f"import os\nprint(sorted(os.environ))\nprint(dict(os.environ))\n"
               f"for path in ['/proc/{os.getpid()}/environ', '/proc/1/environ', '/proc/self/environ']:\n"
               "    try:\n        print(path, open(path, 'rb').read())\n"
               "    except OSError as exc:\n        print(path, 'refused', type(exc).__name__)\n")
    outcome = run_python(snippet, FAST, guard=guard)
    assert outcome.passed and "PATH" in outcome.output
    assert secret not in outcome.output and "HF_TOKEN" not in outcome.output and "OPENAI" not in outcome.output


@BOTH
def test_killing_the_parent_fails(guard: bool) -> None:
    parent = os.getpid()
    snippet = (f"import os, signal\nfor pid in ({parent}, {os.getppid()}):\n"
               "    try:\n        os.kill(pid, signal.SIGKILL)\n        print('killed', pid)\n"
               "    except (OSError, PermissionError) as exc:\n        print('refused', pid, type(exc).__name__)\n")
    outcome = run_python(snippet, FAST, guard=guard)
    assert outcome.passed and "killed" not in outcome.output  # and we are still here to check


def test_huge_output_is_bounded() -> None:
    outcome = run_python("import sys\nwhile True:\n    sys.stdout.write('y' * 65536)",
                         Limits(wall_s=10, cpu_s=5, file_mb=1))
    assert not outcome.passed and len(outcome.output) <= Limits().output_chars


def test_namespaces_are_used_where_they_work() -> None:
    outcome = run_python("print('hi')")
    assert outcome.isolation == ("namespaces" if namespaces_available() else "fallback")
    assert run_python("print('hi')", isolation="fallback").isolation == "fallback"


@pytest.mark.parametrize("snippet, refused", [
    ("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)", "socket.getaddrinfo is not allowed"),
    ("import os\nos.kill(os.getppid(), 0)", "os.kill of another process is not allowed"),  # the same id per worker
    ("open('/tmp/fallback-escape.txt', 'w').write('x')", "outside the sandbox folder is not allowed"),
    ("import subprocess\nsubprocess.run(['true'])", "is not allowed"),
    ("import ctypes", "import ctypes is not allowed"),
])
def test_fallback_relies_on_the_guard(snippet: str, refused: str) -> None:
    """Without namespaces the guard is what refuses; ordinary imports still work there."""
    outcome = run_python(snippet, FAST, isolation="fallback")
    assert not outcome.passed and refused in outcome.output and outcome.isolation == "fallback"
    assert not Path("/tmp/fallback-escape.txt").exists()
    assert run_python("import math, json, collections\nassert math.gcd(12, 18) == 6", FAST,
                      isolation="fallback").passed
