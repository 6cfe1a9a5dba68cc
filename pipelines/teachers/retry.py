"""Teacher request failures: which are worth a retry, how long to wait, and the retry loop itself.

One policy for every failure a teacher server or the network can produce. Transient ones (HTTP 408/409/429/5xx,
connection errors, timeouts, a body that is not JSON, a response without choices) are retried with exponential
backoff, honouring ``Retry-After``; the others (HTTP 400/401/404, ...) are not. The openai client's own retries
are turned off so that this is the only policy, a retry can go to another endpoint, and the recorded error says
how many attempts were made. Recorded reasons are built from the failure's type and status only: never from
a message or header, where a key could hide.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

BASE_DELAY_S = 0.5
MAX_DELAY_S = 8.0
MAX_RETRY_AFTER_S = 120.0  # a server asking for a longer pause gets this one, then another try
RETRY_STATUSES = frozenset({408, 409, 429})


class BadResponse(Exception):
    """A response that arrived but cannot be used (no choices); its message is the recorded reason."""


@dataclass(frozen=True)
class Failure:
    """A failed attempt: a short, secret-free reason and whether another attempt may succeed."""

    reason: str
    retryable: bool
    retry_after_s: float | None = None


class TeacherFailure(Exception):
    """The request failed for good: ``failure`` after ``attempts`` attempts."""

    def __init__(self, failure: Failure, attempts: int) -> None:
        super().__init__(describe(failure, attempts))
        self.failure = failure
        self.attempts = attempts


def describe(failure: Failure, attempts: int) -> str:
    """The error recorded with the samples, e.g. ``HTTP 503 (5 attempts)`` or ``HTTP 400 (not retried)``."""
    if not failure.retryable:
        return f"{failure.reason} (not retried)"
    return f"{failure.reason} ({attempts} attempt{'s' if attempts != 1 else ''})"


def _retry_after(exc: BaseException) -> float | None:
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            continue  # an HTTP date: fall back to our own backoff
        return seconds if seconds > 0 else None
    return None


def classify(exc: BaseException) -> Failure:
    """What kind of failure ``exc`` is. Works on openai/httpx exceptions without needing to import them."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and "APIResponseValidationError" not in names:  # that one carries the 200
        retryable = status in RETRY_STATUSES or status >= 500
        return Failure(f"HTTP {status}", retryable, _retry_after(exc) if retryable else None)
    if isinstance(exc, BadResponse):
        return Failure(str(exc), True)
    if names & {"APITimeoutError", "TimeoutException", "TimeoutError"}:
        return Failure("timeout", True)
    if names & {"APIConnectionError", "TransportError", "ConnectionError"}:
        return Failure("connection error", True)
    if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError) or names & {"APIResponseValidationError"}:
        return Failure("malformed response", True)
    return Failure(type(exc).__name__, False)


def backoff_s(retry: int, retry_after_s: float | None = None, jitter: float = 0.0) -> float:
    """Seconds to wait before retry number ``retry`` (0-based): the server's Retry-After when it gave one,
    else 0.5 s doubling up to 8 s, shortened by up to 25 % (``jitter`` in [0, 1]) so clients spread out."""
    if retry_after_s is not None:
        return min(retry_after_s, MAX_RETRY_AFTER_S)
    return min(BASE_DELAY_S * 2.0**retry, MAX_DELAY_S) * (1.0 - 0.25 * jitter)


async def call_with_retries(call: Callable[[], Awaitable[T]], max_retries: int,
                            on_retry: Callable[[Failure, int, float], Any] | None = None,
                            sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                            jitter: Callable[[], float] = random.random) -> T:
    """``await call()``, retrying transient failures up to ``max_retries`` times; raises ``TeacherFailure``.

    ``on_retry(failure, retry, delay)`` is told before each wait. Cancellation is never swallowed.
    """
    retry = 0
    while True:
        try:
            return await call()
        except Exception as exc:  # noqa: BLE001 - classified below; CancelledError is a BaseException
            failure = classify(exc)
            if not failure.retryable or retry >= max_retries:
                raise TeacherFailure(failure, retry + 1) from None
        delay = backoff_s(retry, failure.retry_after_s, jitter())
        if on_retry is not None:
            on_retry(failure, retry, delay)
        await sleep(delay)
        retry += 1
