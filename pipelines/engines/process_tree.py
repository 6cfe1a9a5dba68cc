"""A run's processes live and stop as one: workers die with the main process, and a signal is the main's to handle.

distilabel 1.5 forks its step workers (a ``multiprocessing`` Pool) and a ``Manager`` server from the main
process. Left alone, a ``kill -9`` (the OOM killer) or a ``kill -TERM`` of the main pid alone (Kubernetes,
``kill PID``) orphans them: init adopts them, they keep the folder's lock and nothing stops them. So, while
``run_scope()`` is active, every process forked from the run:

- dies with its parent: ``PR_SET_PDEATHSIG`` = SIGKILL (the kernel sends it when the forking *thread* ends, so a
  fork from another thread gets a watcher thread that polls the parent pid instead);
- if forked by the main process itself, leaves SIGTERM to the main process: a SIGTERM sent to the whole group
  (Slurm, systemd) would otherwise kill the workers under the main's feet, and the graceful stop could not
  finish. The signal is blocked and read by a thread (``sigwaitinfo``) that exits the process only when the
  sender is the parent (distilabel's own teardown terminates its pool that way).

A worker that must stop the run (a full disk) calls ``request_stop(message)``: the main process gets SIGUSR1 and
reads the message from shared memory (``stop_request()``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator

PR_SET_PDEATHSIG = 1
STOP_SIGNAL = signal.SIGUSR1
_MESSAGE_BYTES = 2048

_state = {"active": False, "main_pid": 0, "fork_parent": 0, "fork_from_main_thread": True}
_message = multiprocessing.RawArray("c", _MESSAGE_BYTES)  # shared with every process forked after this import
_hooks_registered = False


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def die_with_parent() -> bool:
    """Ask the kernel to SIGKILL this process when the thread that forked it ends; False where unsupported."""
    try:
        return _libc().prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int, every_s: float = 0.5) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def _leave_sigterm_to_parent(parent: int) -> None:
    """Block SIGTERM here; a thread exits the process when the parent sends it, and drops it otherwise."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started later inherit the mask

    def wait() -> None:
        while True:
            info = signal.sigwaitinfo({signal.SIGTERM})
            if info.si_pid == parent or os.getppid() != parent:
                os._exit(128 + signal.SIGTERM)

    threading.Thread(target=wait, name="sigterm-from-parent", daemon=True).start()


def _before_fork() -> None:
    _state["fork_parent"] = os.getpid()
    _state["fork_from_main_thread"] = threading.current_thread() is threading.main_thread()


def _after_fork_in_child() -> None:
    if not _state["active"]:
        return
    parent = _state["fork_parent"]
    if not (_state["fork_from_main_thread"] and die_with_parent()):
        _watch_parent(parent)
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)
    if parent == _state["main_pid"] and hasattr(signal, "sigwaitinfo"):  # Linux; elsewhere SIGTERM kills
        _leave_sigterm_to_parent(parent)


@contextlib.contextmanager
def run_scope() -> Iterator[None]:
    """Apply the rules above to every process forked inside the block (the pipeline's run)."""
    global _hooks_registered
    if not _hooks_registered:
        os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
        _hooks_registered = True
    previous = dict(_state)
    _state.update(active=True, main_pid=os.getpid())
    _message.value = b""
    try:
        yield
    finally:
        _state.update(active=previous["active"], main_pid=previous["main_pid"])


def request_stop(message: str) -> None:
    """From a worker: stop the whole run with ``message`` as the user's line (the main process reads it).

    The first request of a run wins; later ones (every batch after a full disk fails too) change nothing.
    """
    if _message.value:
        return
    data = message.encode("utf-8", errors="replace")[:_MESSAGE_BYTES - 1]
    _message.value = data
    main = _state["main_pid"]
    if main and main != os.getpid():
        os.kill(main, STOP_SIGNAL)


def stop_request() -> str | None:
    """The message of a worker's ``request_stop``, if one was made in this run."""
    return _message.value.decode("utf-8", errors="replace") or None


def live_group_members(pgid: int) -> list[int]:
    """Pids of the process group's members that still run (zombies, which a container's init may never reap,
    do not count)."""
    from pathlib import Path

    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members
