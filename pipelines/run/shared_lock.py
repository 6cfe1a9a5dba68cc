"""A run lock that holds across machines: a lease file on the shared storage every node sees.

``run_lock`` (an ``flock``) is exact on one machine, but on NFS-like storage two hosts' locks may not see each
other (NFSv3 without lockd, some FUSE and object-store mounts ignore them), and a host that dies leaves no
kernel to drop its lock. So a Ray run also holds ``<cache>/run.lease``:

- taking it is ``open(O_CREAT | O_EXCL)``, atomic on NFSv3+ and the cluster filesystems; the file holds the
  holder's host, pid, a random token and a beat counter;
- the holder rewrites it every ``beat_s`` (temp file + rename), first checking that the token is still its
  own: if not, the lease was taken over and ``lost`` is set (the run stops; see pipelines/engines/ray/pipeline.py);
- a lease is stale when its holder is a dead pid on this host (a ``kill -9``: taken over at once), or when its
  beat has not moved for ``ttl_s`` as timed by the waiter's own clock (hosts' clocks need not agree);
- a stale lease is renamed to a name only this waiter uses, checked to be the one it judged stale (else put
  back), removed, and taken with ``O_EXCL`` again, so two waiters never both win.

A live holder elsewhere is found out within ``beat_s`` and named in the one-line error. Should two runs still
overlap (a holder partitioned for longer than ``ttl_s``), nothing is duplicated in the dataset: every part file
holds whole problems and ``finalize`` keeps one version of each (pipelines/store.py); the lock saves work.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.run.lock import pid_alive
from pipelines.spec import SpecError

LEASE_NAME = "run.lease"
BEAT_S = 2.0
TTL_S = 20.0


def read_lease(path: Path) -> dict[str, Any] | None:
    """The lease's content, or None when there is none (or it is being replaced this instant)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{data['token']}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@dataclass
class Lease:
    """A held lease: ``lost`` is set when another run took it over; ``release()`` gives it up."""

    path: Path
    data: dict[str, Any]
    beat_s: float
    lost: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="run-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.beat_s):
            current = read_lease(self.path)
            if current is None and self.path.exists():
                continue  # mid-replacement by someone: judge at the next beat
            if current is None or current.get("token") != self.data["token"]:
                self.lost.set()
                return
            self.data["beat"] += 1
            with contextlib.suppress(OSError):  # a storage hiccup: the next beat tries again
                _write(self.path, self.data)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.beat_s + 5)
        if not self.lost.is_set() and (read_lease(self.path) or {}).get("token") == self.data["token"]:
            self.path.unlink(missing_ok=True)


def _create(path: Path, data: dict[str, Any]) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    return True


def _break(path: Path, stale: dict[str, Any], token: str) -> None:
    """Remove the lease judged stale, and only that one."""
    moved = path.with_name(f".{path.name}.broken-{token}")
    try:
        os.rename(path, moved)
    except FileNotFoundError:
        return  # someone else removed it first
    if (read_lease(moved) or {}).get("token") == stale.get("token"):
        moved.unlink(missing_ok=True)
        return
    with contextlib.suppress(FileExistsError):  # a fresh lease of another waiter: give it back
        os.link(moved, path)
    moved.unlink(missing_ok=True)


def _describe(data: dict[str, Any]) -> str:
    return f"host {data.get('host', '?')}, pid {data.get('pid', '?')}"


def acquire(cache_dir: Path, beat_s: float = BEAT_S, ttl_s: float = TTL_S, poll_s: float = 0.2) -> Lease:
    """Take the folder's lease; a live holder is a one-line ``SpecError`` naming its host and pid."""
    path = cache_dir / LEASE_NAME
    data = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex, "beat": 0,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    seen: tuple[str, int] | None = None
    seen_at = time.monotonic()
    while not _create(path, data):
        current = read_lease(path)
        if current is None:
            time.sleep(poll_s)
            continue
        here = current.get("host") == data["host"]
        alive_here = here and pid_alive(int(current.get("pid") or 0))
        mark = (str(current.get("token")), int(current.get("beat") or 0))
        if alive_here or (seen is not None and mark[0] == seen[0] and mark != seen):
            raise SpecError(f"{cache_dir}: another distill run ({_describe(current)}) is using this folder; "
                            "wait for it to finish, or give this run another --out or --cache-dir")
        if seen is None or mark[0] != seen[0]:
            seen, seen_at = mark, time.monotonic()
        if here or time.monotonic() - seen_at > ttl_s:
            _break(path, current, data["token"])
            seen = None
            continue
        time.sleep(poll_s)
    lease = Lease(path, data, beat_s)
    lease.start()
    return lease


@contextlib.contextmanager
def shared_lock(cache_dir: Path, beat_s: float = BEAT_S, ttl_s: float = TTL_S) -> Iterator[Lease]:
    """Hold the folder's lease for the block."""
    lease = acquire(cache_dir, beat_s, ttl_s)
    try:
        yield lease
    finally:
        lease.release()
