"""Turning failures into the one line the user sees, without secrets.

``SpecError`` (pipelines/spec.py) already is such a line. Everything else that escapes a command goes through
``error_line``: known OS conditions get a what-to-do, anything else its type and first line, always with
the known secrets masked; the traceback is for ``--verbose``.
"""

from __future__ import annotations

import errno
import signal
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

RESUME_HINT = "rerun the same command to resume"


INTERRUPTED = f"interrupted; {RESUME_HINT}"


class RunIncomplete(RuntimeError):
    """The pipeline ended without writing every problem (a step failed); its message is the user's line."""


class RunAborted(RuntimeError):
    """A worker stopped the run (e.g. the disk is full); its message is the user's line."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: the run stopped gracefully; the exit status is 128 + the signal's number."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def raise_interrupted(signum: int, frame: object) -> None:
    """A SIGTERM handler: stop like Ctrl-C does (KeyboardInterrupt unwinds, context managers clean up)."""
    raise Interrupted(signum)


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret (API keys, tokens) replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def redact_url(url: str) -> str:
    """``url`` without credentials or query (where tokens hide), for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def error_line(exc: BaseException, secrets: Iterable[str | None] = ()) -> str:
    """One line for an unexpected failure of a run."""
    if isinstance(exc, (RunIncomplete, RunAborted)):
        line = str(exc)
    elif isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        line = f"{exc.filename or 'disk'}: no space left on device; free some space, then {RESUME_HINT}"
    elif isinstance(exc, PermissionError):
        line = f"{exc.filename or 'a file'}: permission denied; choose a folder you can write (--out, --cache-dir)"
    elif isinstance(exc, OSError) and exc.filename:
        line = f"{exc.filename}: {(exc.strerror or type(exc).__name__).lower()}; check the path, then {RESUME_HINT}"
    else:
        first = (str(exc).strip().splitlines() or [""])[0]
        line = f"{type(exc).__name__}: {first} ({RESUME_HINT}; --verbose shows the traceback)"
    return redact(line, secrets)
