"""What a folder handed to ``distill view`` is: a dataset folder, a run still writing, an eval folder, or a parent.

A dataset folder (``distill run``) has ``data-*.parquet`` and ``__meta__/stats.json``; while its run is writing it
has only the part files under ``.cache/parts``. An eval folder (``distill eval``) has ``results.json`` or
``report.md``, and its ``runs/<model>/<set>/`` are dataset folders. Anything else is a parent: the folders below it
(three levels at most) that are one of these.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipelines.run.lock import LOCK_NAME
from pipelines.store import META, PARTS

DEPTH = 3
SKIP = {".cache", "__meta__", ".git", "node_modules", "plots", "scores", "specs", "logs", "sets"}


@dataclass(frozen=True)
class Folder:
    rel: str  # relative to the viewer's root, "." for the root itself
    kind: str  # dataset | eval
    path: Path


def is_dataset(path: Path) -> bool:
    return (any(path.glob("data-*.parquet")) or (path / META / "stats.json").is_file()
            or any((path / ".cache" / PARTS).glob("part-*.parquet")))


def is_eval(path: Path) -> bool:
    return (path / "results.json").is_file() or ((path / "report.md").is_file() and (path / "runs").is_dir())


def kind_of(path: Path) -> str | None:
    if is_eval(path):
        return "eval"
    if is_dataset(path):
        return "dataset"
    return None


def find_folders(root: Path, depth: int = DEPTH) -> list[Folder]:
    """The dataset and eval folders at or below ``root`` (an eval's own runs are listed on its page)."""
    found: list[Folder] = []

    def walk(path: Path, level: int) -> None:
        kind = kind_of(path)
        if kind:
            found.append(Folder(os.path.relpath(path, root), kind, path))
            return
        if level >= depth:
            return
        try:
            children = sorted(p for p in path.iterdir() if p.is_dir() and p.name not in SKIP
                              and not p.name.startswith("."))
        except OSError:
            return
        for child in children:
            walk(child, level + 1)

    walk(root, 0)
    return found


def parts_of(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / PARTS).glob("part-*.parquet"))


def lock_held(cache_dir: Path) -> bool:
    """Whether a run holds the folder's lock, read from /proc/locks (never by taking the lock: a run starting at
    that moment must not find it taken). False where /proc/locks does not exist."""
    try:
        stat = (cache_dir / LOCK_NAME).stat()
        text = Path("/proc/locks").read_text()
    except OSError:
        return False
    # A line: "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" (major and minor in hex, then the inode);
    # processes waiting for a lock have "->" lines, which do not hold it.
    for fields in (line.split() for line in text.splitlines()):
        if len(fields) > 5 and fields[1] == "FLOCK":
            major, minor, inode = fields[5].split(":")
            if int(inode) == stat.st_ino and (int(major, 16), int(minor, 16)) == (os.major(stat.st_dev),
                                                                                  os.minor(stat.st_dev)):
                return True
    return False


def is_live(out_dir: Path, cache_dir: Path | None = None) -> bool:
    """A run is writing this folder: part files and no stats.json yet, or the run's lock is held."""
    cache_dir = cache_dir or out_dir / ".cache"
    if not parts_of(cache_dir):
        return False
    return not (out_dir / META / "stats.json").is_file() or lock_held(cache_dir)


def resolve_inside(root: Path, rel: str) -> Path | None:
    """``root/rel`` when it stays inside ``root`` (no ``..`` or symlink escapes), else None."""
    path = (root / rel).resolve()
    return path if path == root or root in path.parents else None
