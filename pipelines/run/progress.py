"""Progress of long jobs: one bar on a terminal, one line every N seconds otherwise (logs, Slurm, CI).

A run's progress is read from what is durably written, its part files (``PartsTally``), by a thread of the main
process, so it counts what a kill would keep, and the workers need not report anything. ``describe`` is the pure
part: the counts in, the line out. ``Progress`` draws it: a rich bar on a TTY, plain lines elsewhere.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow.parquet as pq

from pipelines.store import part_files

DEFAULT_EVERY_S = 30.0


@dataclass
class PartsTally:
    """What the part files written since ``start`` hold: problems, samples, kept, teacher errors, tokens."""

    cache_dir: Path
    seen: set[str] = field(default_factory=set)
    problem_ids: set[str] = field(default_factory=set)
    samples: int = 0
    kept: int = 0
    teacher_errors: int = 0
    tokens: int = 0

    def start(self) -> PartsTally:
        self.seen = {p.name for p in part_files(self.cache_dir)}
        return self

    def poll(self) -> PartsTally:
        for part in part_files(self.cache_dir):
            if part.name in self.seen:
                continue
            try:
                table = pq.read_table(part, columns=["problem_id", "kept", "rejection_reason", "completion_tokens"])
            except (OSError, ValueError):  # removed or replaced meanwhile: the next poll sees it again
                continue
            self.seen.add(part.name)
            columns = table.to_pydict()
            self.problem_ids.update(columns["problem_id"])
            self.samples += table.num_rows
            self.kept += sum(bool(k) for k in columns["kept"])
            self.teacher_errors += sum(r == "teacher_error" for r in columns["rejection_reason"])
            self.tokens += sum(t or 0 for t in columns["completion_tokens"])
        return self


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def eta_s(done: int, total: int | None, elapsed_s: float) -> float | None:
    """Seconds left at this run's pace; None before anything is done or without a total."""
    if not total or done <= 0 or elapsed_s <= 0:
        return None
    return max(total - done, 0) * elapsed_s / done


def detail(tally: PartsTally, elapsed_s: float, compact: bool = False) -> str:
    """``74 samples, kept 91.9%, 0 teacher errors, 1,234 tokens/s`` (compact, for a bar: ``· … tok/s``)."""
    kept = f"{tally.kept / tally.samples:.1%}" if tally.samples else "-"
    rate = f"{tally.tokens / elapsed_s:,.0f}" if elapsed_s > 0 else "-"
    if compact:
        return f"{tally.samples} samples · kept {kept} · {tally.teacher_errors} errors · {rate} tok/s"
    return f"{tally.samples} samples, kept {kept}, {tally.teacher_errors} teacher errors, {rate} tokens/s"


def eta_text(tally: PartsTally, done_before: int, total: int | None, elapsed_s: float) -> str:
    left = eta_s(len(tally.problem_ids), None if total is None else total - done_before, elapsed_s)
    return _clock(left) if left is not None else "?"


def describe(tally: PartsTally, done_before: int, total: int | None, elapsed_s: float) -> str:
    """``37/96 problems, 74 samples, kept 91.9%, 0 teacher errors, 1,234 tokens/s, ETA 0:42``."""
    done = done_before + len(tally.problem_ids)
    return (f"{done}/{total if total is not None else '?'} problems, {detail(tally, elapsed_s)}, "
            f"ETA {eta_text(tally, done_before, total, elapsed_s)}")


class Progress:
    """``with Progress("generate", total) as p: p.update(done, line, short)``: a bar on a TTY (with ``short``,
    the counts being the bar's), else ``line`` every ``every_s`` seconds and once at the end."""

    def __init__(self, label: str, total: int | None, every_s: float = DEFAULT_EVERY_S,
                 stream: IO[str] | None = None, tty: bool | None = None, unit: str = "problems") -> None:
        self.label, self.total, self.every_s, self.unit = label, total, every_s, unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self._bar: Any = None
        self._task: Any = None
        self._last_line = -float("inf")
        self._line = ""

    def __enter__(self) -> Progress:
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(bar_width=12), MofNCompleteColumn(),
                                     TextColumn(f"{self.unit} · {{task.fields[short]}}"),
                                     console=Console(file=self.stream), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total, short="")
        return self

    def update(self, done: int, line: str, short: str | None = None) -> None:
        self._line = line
        if self._bar is not None:
            self._bar.update(self._task, completed=done, short=short or line)
        elif time.monotonic() - self._last_line >= self.every_s:
            self._emit()

    def _emit(self) -> None:
        self._last_line = time.monotonic()
        if self._line:
            print(f"{self.label}: {self._line}", file=self.stream, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self._line and time.monotonic() - self._last_line > 0.5:
            self._emit()


class RunProgress:
    """A thread of the main process that shows a run's progress from its part files until stopped."""

    def __init__(self, cache_dir: Path, done_before: int, total: int | None, every_s: float = DEFAULT_EVERY_S,
                 poll_s: float = 0.5, stream: IO[str] | None = None, tty: bool | None = None) -> None:
        self.tally = PartsTally(cache_dir).start()
        self.done_before, self.total, self.poll_s = done_before, total, poll_s
        self.display = Progress("generate", total, every_s, stream, tty)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="run-progress", daemon=True)
        self._started = time.monotonic()

    def _show(self) -> None:
        self.tally.poll()
        elapsed = time.monotonic() - self._started
        line = describe(self.tally, self.done_before, self.total, elapsed)
        short = (f"{detail(self.tally, elapsed, compact=True)} · "
                 f"ETA {eta_text(self.tally, self.done_before, self.total, elapsed)}")
        self.display.update(self.done_before + len(self.tally.problem_ids), line, short)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._show()

    def __enter__(self) -> RunProgress:
        self.display.__enter__()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._show()
        self.display.__exit__(*exc)
