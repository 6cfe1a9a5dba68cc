"""Where a run's log goes: everything into ``<cache>/run.log``; the terminal keeps the factory's lines and errors.

distilabel logs a few INFO lines per step and batch, and libraries warn at import (pydantic's
``UnsupportedFieldAttributeWarning`` from distilabel's models): on a terminal they bury the progress bar. Without
``-v`` they go to the run's log file only; the terminal shows the ``distill`` logger and anything at ERROR.
distilabel sends every process's records through one queue to handlers in the main process
(``ThrottledPipeline`` adds these there); before and after the pipeline they sit on the root logger.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
from collections.abc import Iterator
from pathlib import Path

LOG_NAME = "run.log"
WARNINGS_LOGGER = "py.warnings"
_FORMAT = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")


def is_factory_record(record: logging.LogRecord) -> bool:
    return record.name == "distill" or record.name.startswith("distill.")


class TerminalFilter(logging.Filter):
    """What a terminal shows without -v: the factory's own lines, and errors from anyone."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or (is_factory_record(record) and record.levelno >= logging.INFO)


def hold_warnings() -> None:
    """Route ``warnings.warn`` into logging and keep the records until ``run_log`` knows the file (non -v)."""
    logging.captureWarnings(True)
    held = logging.getLogger(WARNINGS_LOGGER)
    held.propagate = False
    if not any(isinstance(h, logging.handlers.MemoryHandler) for h in held.handlers):
        held.addHandler(logging.handlers.MemoryHandler(10_000, flushLevel=logging.CRITICAL + 1))


@contextlib.contextmanager
def run_log(cache_dir: Path, verbose: bool) -> Iterator[logging.Handler]:
    """For the block: every record (and the held warnings) into ``<cache>/run.log``; terminal handlers filtered."""
    handler = logging.FileHandler(cache_dir / LOG_NAME, encoding="utf-8", delay=True)
    handler.setFormatter(_FORMAT)
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    terminal = [h for h in root.handlers if h is not handler]
    quiet = TerminalFilter()
    if not verbose:
        for h in terminal:
            h.addFilter(quiet)
    held = logging.getLogger(WARNINGS_LOGGER)
    for memory in [h for h in held.handlers if isinstance(h, logging.handlers.MemoryHandler)]:
        memory.setTarget(handler)
        memory.flush()
    held.addHandler(handler)
    try:
        yield handler
    finally:
        held.removeHandler(handler)
        for memory in [h for h in held.handlers if isinstance(h, logging.handlers.MemoryHandler)]:
            memory.setTarget(None)
        for h in terminal:
            h.removeFilter(quiet)
        root.removeHandler(handler)
        with contextlib.suppress(OSError):  # a full disk: the log's last lines are lost, not the user's error
            handler.close()


def route_listener(listener: logging.handlers.QueueListener | None, file_handler: logging.Handler | None,
                   verbose: bool) -> None:
    """Inside the pipeline: the file gets every process's records; distilabel's terminal handler is filtered."""
    if listener is None:
        return
    for h in listener.handlers:
        if not verbose and not isinstance(h, logging.FileHandler):
            h.addFilter(TerminalFilter())
    if file_handler is not None and file_handler not in listener.handlers:
        listener.handlers = (*listener.handlers, file_handler)
