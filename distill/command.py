"""How every ``distill`` command ends: one error path, one flag-error formatter, one SIGTERM handler.

A command body runs inside ``user_errors()``: a ``SpecError`` prints its own line, Ctrl-C or SIGTERM prints the
resume hint and exits 128 + the signal, anything else becomes ``pipelines.errors.error_line`` (secrets masked;
the traceback only with ``--verbose``). Every exit for bad input is status 2 with one ``error: …`` line.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import NoReturn

import typer
from pydantic import ValidationError

from pipelines.errors import INTERRUPTED, Interrupted, error_line, raise_interrupted
from pipelines.spec import SpecError


def fail(message: str) -> NoReturn:
    """One clear line on stderr and exit status 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def interrupted(exc: KeyboardInterrupt) -> NoReturn:
    """Ctrl-C or SIGTERM: what was written is kept; 128 + the signal's number, as shells report it."""
    typer.echo(f"error: {INTERRUPTED}", err=True)
    raise typer.Exit(exc.exit_code if isinstance(exc, Interrupted) else 130)


@contextmanager
def user_errors(secrets: list[str | None] | None = None) -> Iterator[list[str | None]]:
    """Run a command's body so that every failure is one line. Append keys to the yielded list as they are read:
    an unexpected error's line has them masked."""
    secrets = secrets if secrets is not None else []
    try:
        yield secrets
    except typer.Exit:
        raise
    except KeyboardInterrupt as exc:
        interrupted(exc)
    except SpecError as exc:
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - one line for the user; the traceback with --verbose
        logging.getLogger("distill").debug("command failed", exc_info=True)
        fail(error_line(exc, secrets=secrets))


def flag_error(exc: ValidationError, flags: Mapping[str, str] | None = None, prefix: str = "--") -> SpecError:
    """A pydantic error about options as the one line a user can act on: ``--flag: message``. ``flags`` maps a
    field name to its flag where they differ (``base_url`` → ``teacher-url``)."""
    first = exc.errors()[0]
    field = str(first["loc"][0] if first["loc"] else "")
    flag = (flags or {}).get(field, field.replace("_", "-"))
    return SpecError(f"{prefix}{flag}: {first['msg'].removeprefix('Value error, ')}")


def stop_on_sigterm(main_only: bool = False) -> None:
    """SIGTERM stops a command like Ctrl-C: ``Interrupted`` (a KeyboardInterrupt) unwinds, ``finally`` blocks stop
    the servers it started, and the exit status is 128 + 15. ``main_only``: processes forked later (a pipeline's
    workers inherit the handler) keep the default and just end, as their parent stops them."""
    main_pid = os.getpid()

    def handler(signum: int, frame: object) -> None:
        if main_only and os.getpid() != main_pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise_interrupted(signum, frame)

    signal.signal(signal.SIGTERM, handler)
