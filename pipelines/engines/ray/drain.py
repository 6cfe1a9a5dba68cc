"""Generation replicas on Ray, each with its own rolling window, and no problem left behind in one at the end.

Replicas of a distilabel step share one input queue, and a window hands on the problems finished so far, from
whichever batch (pipelines/steps/generate.py). Only the replica that takes the last batch knows the stream has
ended; the others sit blocked on the queue with requests still in flight. So the replicas meet at a board, a
small Ray actor on the driver's node: the last replica marks the end, every other replica's watcher thread
(the window runs on its own thread, so it sees the mark while its step waits for input) finishes its window
and deposits the rows, and the last replica waits for all of them and hands them on with its last batch.
distilabel orders the batches by sequence number, so rows deposited from a replica's window join the last
batch whatever its other batches are still doing.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

POLL_S = 0.2


class DrainBoard:
    """The meeting point (a Ray actor): the end mark, and the rows the other replicas deposited."""

    def __init__(self) -> None:
        self._ended = False
        self._rows: list[dict[str, Any]] = []
        self._drained: set[str] = set()

    def end(self) -> None:
        self._ended = True

    def ended(self) -> bool:
        return self._ended

    def deposit(self, replica: str, rows: list[dict[str, Any]]) -> None:
        self._rows.extend(rows)
        self._drained.add(replica)

    def collect(self, others: int) -> list[dict[str, Any]] | None:
        """Every deposited row once ``others`` replicas have deposited; None until then."""
        if len(self._drained) < others:
            return None
        rows, self._rows = self._rows, []
        return rows


def board_name(pipeline_name: str, step_name: str) -> str:
    return f"distill-{pipeline_name}-{step_name}-drain"


def create_board(name: str) -> Any:
    """Start the board as a named actor on this (the driver's) node; it dies with the driver."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(DrainBoard).options(name=name, num_cpus=0, scheduling_strategy=here).remote()


class ReplicaDrain:
    """One generation replica's side. ``end()`` (the replica that took the last batch) marks the end and
    ``others()`` then waits for the rows every other replica deposited. In the other replicas a watcher
    deposits the window once the end is marked; a batch this replica takes after that (it had pulled it from
    the queue just before) is then waited for whole (``handed_over``)."""

    def __init__(self, board: str, replicas: int, take_all: Callable[[], list[dict[str, Any]]],
                 busy: threading.Lock) -> None:
        import ray

        self._board = ray.get_actor(board)
        self._others = replicas - 1
        self._take_all = take_all
        self._busy = busy
        self._id = uuid.uuid4().hex
        self._is_last = False
        self.handed_over = False
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="drain-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        import ray

        while not self._closed.wait(POLL_S):
            if not ray.get(self._board.ended.remote()):
                continue
            if self._is_last:
                return
            with self._busy:  # after the batch this replica may be processing: its rows went out with it
                rows = self._take_all()
                self.handed_over = True
                ray.get(self._board.deposit.remote(self._id, rows))
            return

    def end(self) -> None:
        import ray

        self._is_last = True  # before the mark: this replica's own watcher must not deposit
        ray.get(self._board.end.remote())

    def others(self) -> list[dict[str, Any]]:
        import ray

        while (rows := ray.get(self._board.collect.remote(self._others))) is None:
            if self._closed.wait(POLL_S):
                return []
        return rows

    def close(self) -> None:
        """The step unloads (the end, or a stop): a replica that has not deposited yet says it is done, so the
        last one never waits for it (its requests still in flight are dropped, and asked again on a rerun)."""
        import ray

        self._closed.set()
        self._thread.join(timeout=30)
        if self._is_last or self.handed_over:
            return
        self.handed_over = True
        try:
            ray.get(self._board.deposit.remote(self._id, []), timeout=10)
        except Exception:  # noqa: BLE001 - the board went with the driver: nobody waits any more
            pass
