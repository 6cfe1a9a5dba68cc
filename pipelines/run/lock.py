"""One run per cache folder: two runs resuming the same folder at once would generate problems twice.

An advisory ``flock`` on ``<cache>/run.lock``: the kernel drops it when the last process holding it dies,
however it dies (``kill -9`` included). distilabel's forked workers inherit it, and they die with the main
process (``pipelines/engines/process_tree.py``), so a run that is gone never blocks the next. Should a process of a
dead run still hold it (one started by other means), the lock waits a few seconds for it to go, then names it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from pipelines.spec import SpecError

LOCK_NAME = "run.lock"
LEFTOVER_GRACE_S = 5.0  # processes of a run that just died are still being killed


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def lock_holders(path: Path) -> list[int]:
    """Pids of the processes with ``path`` open (Linux /proc; [] elsewhere)."""
    target = os.path.realpath(path)
    holders = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.path.realpath(fd) == target for fd in fd_dir.iterdir()):
                holders.append(int(fd_dir.parent.name))
        except OSError:
            continue
    return sorted(pid for pid in holders if pid != os.getpid())


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextlib.contextmanager
def run_lock(cache_dir: Path, grace_s: float = LEFTOVER_GRACE_S) -> Iterator[Path]:
    """Hold the folder's lock for the block; a held lock is a one-line ``SpecError`` naming the holder."""
    path = cache_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            holder = int(text) if text.isdigit() else None
            if holder is not None and pid_alive(holder):
                raise SpecError(f"{cache_dir}: another distill run (pid {holder}) is using this folder; wait for "
                                "it to finish, or give this run another --out or --cache-dir")
            deadline = time.monotonic() + grace_s
            while not _try_lock(fd):
                if time.monotonic() > deadline:
                    pids = " ".join(map(str, lock_holders(path)))
                    run = f"the run that used this folder (pid {holder})" if holder else "an earlier run"
                    if not pids:  # still exiting, or in another PID namespace (a container, another host's NFS)
                        raise SpecError(f"{cache_dir}: {run} has exited, but its lock is still held by a process "
                                        "not visible from here; rerun in a few seconds, or stop the processes of "
                                        f"that run where they run (fuser {path} shows them)")
                    raise SpecError(f"{cache_dir}: {run} has exited, but processes it left still hold it "
                                    f"(pids {pids}); stop them (kill {pids}) and rerun")
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield path
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
