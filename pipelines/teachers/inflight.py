"""Keep a teacher saturated: a rolling window of in-flight requests across batches, spread over endpoints.

vLLM batches continuously, so it is fastest when a constant number of requests is in flight. Sending a
batch and waiting for all of it leaves the server idle behind the batch's longest trace; the window below
starts a new request the moment one finishes, whatever batch it came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

Key = TypeVar("Key")


def least_in_flight(in_flight: Sequence[int], start: int = 0) -> int:
    """Index of the endpoint with the fewest requests in flight; ties go to the first one from ``start`` on."""
    count = len(in_flight)
    return min(range(count), key=lambda i: (in_flight[i], (i - start) % count))


class EndpointPool:
    """Leases one of ``count`` endpoints per request: the least loaded, at most ``limit`` in flight each."""

    def __init__(self, count: int, limit: int) -> None:
        if count < 1 or limit < 1:
            raise ValueError("an endpoint pool needs at least one endpoint and a limit of at least 1")
        self.limit = limit
        self.in_flight = [0] * count
        self.served = [0] * count
        self._turn = 0
        self._room: asyncio.Semaphore | None = None  # made on first use, in the loop that uses it

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[int]:
        """``async with pool.lease() as index``: waits for room, then holds endpoint ``index``."""
        if self._room is None:
            self._room = asyncio.Semaphore(self.limit * len(self.in_flight))
        async with self._room:
            # A free unit of the shared semaphore means some endpoint is below its limit: the least loaded is.
            index = least_in_flight(self.in_flight, self._turn)
            self._turn = (index + 1) % len(self.in_flight)
            self.in_flight[index] += 1
            self.served[index] += 1
            try:
                yield index
            finally:
                self.in_flight[index] -= 1


class RollingWindow(Generic[Key]):
    """Runs ``call(payload)`` for submitted ``(key, payload)`` pairs on a background event loop, never more
    than ``size`` at once, and hands back ``(key, result)`` pairs as they finish, in completion order.

    ``submit`` never waits; callers pace themselves with ``wait_for_room`` (at most ``backlog`` submitted
    but not started), which bounds memory whatever the number of rows streamed through. A call that raises
    gives its exception as the result.
    """

    def __init__(self, call: Callable[[Any], Awaitable[Any]], size: int, backlog: int | None = None) -> None:
        if size < 1:
            raise ValueError("window size must be at least 1")
        self.size = size
        self.backlog = max(backlog if backlog is not None else size, 1)
        self.peak_in_flight = 0
        self.started = 0
        self._call = call
        self._waiting: deque[tuple[Key, Any]] = deque()
        self._finished: list[tuple[Key, Any]] = []
        self._in_flight = 0
        self._closed = False
        self._changed = threading.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rolling-window", daemon=True)
        self._thread.start()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def pending(self) -> int:
        """Submitted and not yet handed back: waiting, in flight or finished."""
        with self._changed:
            return len(self._waiting) + self._in_flight + len(self._finished)

    def submit(self, items: Iterable[tuple[Key, Any]]) -> None:
        with self._changed:
            if self._closed:
                raise RuntimeError("the rolling window is closed")
            self._waiting.extend(items)
        self._loop.call_soon_threadsafe(self._fill)

    def wait_for_room(self) -> None:
        """Block while ``backlog`` or more submitted requests wait for a place in the window."""
        with self._changed:
            self._changed.wait_for(lambda: len(self._waiting) < self.backlog or self._closed)

    def take(self, wait_all: bool = False) -> list[tuple[Key, Any]]:
        """The requests finished so far; with ``wait_all``, first wait until every submitted one has."""
        with self._changed:
            if wait_all:
                self._changed.wait_for(lambda: not self._waiting and not self._in_flight or self._closed)
            finished, self._finished = self._finished, []
            return finished

    def close(self) -> None:
        """Cancel whatever is still running and stop the loop thread."""
        with self._changed:
            if self._closed:
                return
            self._closed = True
            self._waiting.clear()
            self._changed.notify_all()

        def cancel_all() -> None:
            for task in list(self._tasks):
                task.cancel()
            self._loop.call_soon(self._loop.stop)

        self._loop.call_soon_threadsafe(cancel_all)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    # Runs on the loop thread only.
    def _fill(self) -> None:
        with self._changed:
            while self._waiting and self._in_flight < self.size and not self._closed:
                key, payload = self._waiting.popleft()
                self._in_flight += 1
                self.started += 1
                self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
                task = self._loop.create_task(self._run_one(key, payload))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            self._changed.notify_all()  # the waiting queue may have shrunk below the backlog

    async def _run_one(self, key: Key, payload: Any) -> None:
        try:
            result = await self._call(payload)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed back to the caller as the result
            result = exc
        with self._changed:
            self._in_flight -= 1
            self._finished.append((key, result))
            self._changed.notify_all()
        self._fill()
