"""The rolling window and the endpoint pool: what stays in flight, what comes back, and where it goes."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from pipelines.teachers.inflight import EndpointPool, RollingWindow, least_in_flight


def wait_until(condition, what: str, limit: float = 10.0) -> None:
    """Poll a condition (a liveness guard against a hung test, not a timing assertion)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.002)


class Gate:
    """A call per key that returns only once the test opens that key's gate."""

    def __init__(self) -> None:
        self.open: dict[str, threading.Event] = {}
        self.lock = threading.Lock()

    def event(self, key: str) -> threading.Event:
        with self.lock:
            return self.open.setdefault(key, threading.Event())

    async def __call__(self, key: str) -> str:
        gate = self.event(key)
        while not gate.is_set():
            await asyncio.sleep(0.001)
        if key.startswith("boom"):
            raise ValueError(key)
        return f"done {key}"


def test_least_in_flight_picks_the_emptiest_and_rotates_ties():
    assert least_in_flight([3, 1, 2]) == 1
    assert least_in_flight([2, 2, 2], start=0) == 0
    assert least_in_flight([2, 2, 2], start=2) == 2
    assert least_in_flight([2, 1, 1], start=0) == 1
    assert least_in_flight([2, 1, 1], start=2) == 2
    assert least_in_flight([0]) == 0


def test_window_keeps_size_in_flight_across_batches_and_returns_each_key_once():
    gate = Gate()
    window: RollingWindow[str] = RollingWindow(gate, size=4, backlog=8)
    try:
        window.submit((k, k) for k in ["a0", "a1", "a2"])  # batch 1
        window.submit((k, k) for k in ["b0", "b1", "b2"])  # batch 2
        wait_until(lambda: window.started == 4, "four requests started")
        assert window.in_flight == 4 and window.pending == 6
        gate.event("a0").set()  # one finishes: the next waiting one (from batch 2) takes its place
        wait_until(lambda: window.started == 5, "a fifth request started")  # a0 is recorded before that
        assert window.in_flight == 4
        assert window.take() == [("a0", "done a0")]
        for key in ["a1", "a2", "b0", "b1", "b2"]:
            gate.event(key).set()
        rest = window.take(wait_all=True)
        assert sorted(k for k, _ in rest) == ["a1", "a2", "b0", "b1", "b2"]
        assert all(result == f"done {k}" for k, result in rest)
        assert window.peak_in_flight == 4 and window.pending == 0 and window.take() == []
    finally:
        window.close()


def test_window_hands_back_exceptions_as_results():
    gate = Gate()
    window: RollingWindow[str] = RollingWindow(gate, size=2)
    try:
        window.submit([("ok", "ok"), ("boom1", "boom1")])
        gate.event("ok").set()
        gate.event("boom1").set()
        results = dict(window.take(wait_all=True))
        assert results["ok"] == "done ok"
        assert isinstance(results["boom1"], ValueError) and str(results["boom1"]) == "boom1"
    finally:
        window.close()


def test_window_memory_stays_bounded_when_streaming_many_batches():
    async def instant(payload: int) -> int:
        return payload * 2

    size, backlog, batch = 8, 16, 5
    window: RollingWindow[int] = RollingWindow(instant, size=size, backlog=backlog)
    seen: list[int] = []
    try:
        for start in range(0, 1000, batch):
            window.submit((i, i) for i in range(start, start + batch))
            assert window.pending <= size + backlog + batch
            window.wait_for_room()
            seen += [key for key, result in window.take() if result == key * 2]
        seen += [key for key, _ in window.take(wait_all=True)]
    finally:
        window.close()
    assert sorted(seen) == list(range(1000))


def test_window_close_cancels_hung_requests_and_refuses_new_ones():
    gate = Gate()
    window: RollingWindow[str] = RollingWindow(gate, size=2)
    window.submit([("never", "never"), ("again", "again"), ("queued", "queued")])
    wait_until(lambda: window.in_flight == 2, "two hung requests")
    window.close()
    assert window.take(wait_all=True) == []  # returns at once once closed
    with pytest.raises(RuntimeError):
        window.submit([("late", "late")])


def test_endpoint_pool_spreads_by_least_in_flight_and_respects_the_limit():
    async def scenario() -> tuple[list[int], list[int], list[int]]:
        pool = EndpointPool(count=2, limit=3)
        release = asyncio.Event()
        chosen: list[int] = []
        peaks = [0, 0]

        async def request(hold: asyncio.Event | None) -> None:
            async with pool.lease() as index:
                chosen.append(index)
                peaks[index] = max(peaks[index], pool.in_flight[index])
                if hold is not None:
                    await hold.wait()

        # Endpoint 0 gets a slow request first; then quick ones must avoid it while it is busier.
        slow = asyncio.create_task(request(release))
        await asyncio.sleep(0)
        for _ in range(6):
            await request(None)
        # Now fill both endpoints to the limit: the seventh waits until one is released.
        held = [asyncio.create_task(request(release)) for _ in range(6)]
        await asyncio.sleep(0.01)
        in_flight_full = list(pool.in_flight)
        release.set()
        await asyncio.gather(slow, *held)
        return chosen, in_flight_full, peaks

    chosen, in_flight_full, peaks = asyncio.run(scenario())
    assert chosen[0] == 0 and chosen[1:7] == [1] * 6  # quick requests all went to the idle endpoint
    assert in_flight_full == [3, 3]  # 1 slow + 6 held = 7 > 2 x 3: one waited for room
    assert peaks == [3, 3]
    assert len(chosen) == 13


def test_endpoint_pool_rejects_nonsense():
    with pytest.raises(ValueError):
        EndpointPool(count=0, limit=4)
    with pytest.raises(ValueError):
        RollingWindow(lambda x: x, size=0)
