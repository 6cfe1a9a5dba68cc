"""One run per cache folder: two runs resuming the same folder at once would generate problems twice.

An advisory ``flock`` on ``<cache>/run.lock``: the kernel drops it when the process dies, however it dies
(``kill -9`` included), so a crashed run never leaves a stale lock behind. Worker processes forked by
distilabel inherit it, so it is held until the last of them is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from pipelines.spec import SpecError

LOCK_NAME = "run.lock"


@contextlib.contextmanager
def run_lock(cache_dir: Path) -> Iterator[Path]:
    """Hold the folder's lock for the block; a held lock is a one-line ``SpecError`` naming the holder."""
    path = cache_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise SpecError(f"{cache_dir}: another distill run (pid {holder}) is using this folder; wait for it "
                            "to finish, or give this run another --out or --cache-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield path
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
