"""distilabel's local ``Pipeline`` with its per-batch bookkeeping made cheap, so its main process keeps up.

distilabel 1.5's main process routes every batch between the steps. Profiled with ``bench/throughput.py
--instant`` (py-spy), most of its CPU went to three things that scale with batches, not rows, and do no
routing: a snapshot of its own state after every batch (``pipeline.yaml``, the batch manager), recomputing the
pipeline's signature to name the cache folder on every batch, and rendering two INFO lines per step and batch
with rich. At a few hundred rows/s on a busy machine that starved the teacher window. Here the snapshot is
taken at most every ``snapshot_every_s`` and always at the end (the factory resumes from its own part files,
``pipelines/store.py``, so the snapshot is only a diagnostic), the cache location is computed once per run,
and the per-batch chatter is dropped (the write step's progress line stays).

It also stops like one program (``pipelines/engines/process_tree.py``): its workers die with it, SIGTERM stops it as
gracefully as Ctrl-C (finished batches are written, requests in flight are dropped), and a worker can stop it
with a message (SIGUSR1). ``stop_reason`` says why a run that returned was stopped.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from typing import Any

from distilabel.pipeline import Pipeline

from pipelines.engines.process_tree import STOP_SIGNAL, run_scope, stop_request
from pipelines.errors import Interrupted, RunAborted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, STOP_SIGNAL)

# distilabel's step wrapper logs these two at INFO for every step and batch.
PER_BATCH_CHATTER = ("📦 Processing batch", "📨 Step '")


class DropPerBatchChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and str(record.msg).startswith(PER_BATCH_CHATTER))


class _DiscardOutputs:
    """In place of distilabel's write buffer: the write step's outputs (problem ids) are not needed anywhere."""

    def add_batch(self, batch: Any) -> None:
        pass

    def close(self) -> None:
        pass


class FactoryPipelineMixin:
    """What the local and the Ray engine share over distilabel's own pipelines: the throttled snapshot and the
    run's log routing. Mixed in before the distilabel class (``snapshot_every_s``, ``_last_snapshot``,
    ``log_handler`` and ``verbose`` are set by the subclass)."""

    snapshot_every_s: float
    _last_snapshot: float
    log_handler: Any
    verbose: bool

    def _cache(self) -> None:
        now = time.monotonic()
        if now - self._last_snapshot < self.snapshot_every_s:
            return
        self._last_snapshot = now
        try:
            super()._cache()  # type: ignore[misc]
        except OSError as exc:  # only a diagnostic (see the module doc): a full disk must not fail the run here
            self._logger.warning(f"could not write distilabel's snapshot ({exc.strerror or exc})")  # type: ignore[attr-defined]

    def _init_steps_load_status(self) -> None:
        # The first call after distilabel set up its logging (a queue from every process to handlers in this
        # one): filter what its handlers show from here on, before its first INFO lines.
        from distilabel.utils import logging as distilabel_logging

        from pipelines.engines.log import route_listener

        listener = distilabel_logging.queue_listener
        for handler in listener.handlers if listener is not None else ():
            handler.addFilter(DropPerBatchChatter())
        route_listener(listener, self.log_handler, self.verbose)
        super()._init_steps_load_status()  # type: ignore[misc]


class ThrottledPipeline(FactoryPipelineMixin, Pipeline):
    """A ``Pipeline`` whose per-batch bookkeeping is rate-limited or computed once (see the module doc)."""

    snapshot_every_s = 5.0
    load_poll_s = 0.05
    _last_snapshot = -math.inf
    _location: Any = None

    stop_reason: BaseException | None = None
    log_handler: logging.Handler | None = None  # <cache>/run.log (pipelines/engines/log.py)
    verbose = False

    def run(self, *args: Any, **kwargs: Any) -> Any:
        self._location = None  # the steps are final now: compute the cache location once for this run
        self._last_snapshot = -math.inf
        self.stop_reason = None
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        signal.signal(STOP_SIGNAL, self._on_signal)  # a worker may ask before the pool is up
        root = logging.getLogger()
        root_handlers, root_level = list(root.handlers), root.level  # distilabel replaces them with its queue
        try:
            with run_scope():
                return super().run(*args, **kwargs)
        except (SystemExit, Exception):  # distilabel's forced stop (a third signal) exits from its handler
            if self.stop_reason is not None:  # the first cause is the user's line, not what failed after it
                raise self.stop_reason from None
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            root.handlers[:], root.level = root_handlers, root_level
            self._location = None

    def _handle_keyboard_interrupt(self) -> Any:
        # distilabel stops gracefully on SIGINT; SIGTERM (Slurm, systemd, Kubernetes) and a worker's request
        # take the same way. Returns the SIGINT handler it replaced, like distilabel's.
        previous = signal.getsignal(signal.SIGINT)
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        return previous

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == STOP_SIGNAL:
            if isinstance(self.stop_reason, RunAborted):
                return  # already stopping for it (each failing batch asks again)
            self.stop_reason = RunAborted(stop_request() or "a pipeline step stopped the run")
        elif not isinstance(self.stop_reason, RunAborted):
            self.stop_reason = Interrupted(signum)
        if getattr(self, "_pool", None) is None:  # not started yet (or already torn down): nothing to drain
            raise self.stop_reason
        self._stop()

    @property
    def _cache_location(self) -> Any:
        if self._location is None:
            location = Pipeline._cache_location.fget(self)  # type: ignore[attr-defined]
            if not self._is_running():
                return location
            self._location = location
        return self._location

    def _register_batch(self, batch: Any) -> None:
        # distilabel also dumps every batch of every step as JSON ("steps_data", for its own cache): the factory
        # resumes from its part files, so that is only CPU time, a second copy of the samples on disk, and a
        # write that fails in the main process when the disk is full.
        self._batch_manager.register_batch(batch, steps_data_path=None)  # type: ignore[union-attr]

    def _handle_batch_on_stop(self, batch: Any) -> None:
        self._batch_manager.register_batch(batch, steps_data_path=None)  # type: ignore[union-attr]
        step = self.dag.get_step(batch.step_name)["step"]
        for successor in self.dag.get_step_successors(step.name):
            self._batch_manager.add_batch(successor, batch)  # type: ignore[union-attr]

    def _run_stage_steps_and_wait(self, stage: int) -> bool:
        # distilabel's own version checks whether the steps have loaded every 2.5 s (holding the stop lock):
        # steps that load in half a second waited up to 2.5 s more before the first batch, in a start-up of
        # ~5 s (bench/startup.py). The same checks, every LOAD_POLL_S.
        from distilabel.pipeline.base import _STEP_LOAD_FAILED_CODE, _STEP_UNLOADED_CODE

        steps = self._steps_to_be_loaded_in_stage(stage)
        self._run_steps(steps=steps)
        self._logger.info(f"⏳ Waiting for all the steps of stage {stage} to load...")
        while True:
            with self._stop_called_lock:
                if self._stop_called:
                    return False
                with self._steps_load_status_lock:
                    status = self._get_steps_load_status(steps)
                if any(replicas == _STEP_LOAD_FAILED_CODE for replicas in status.values()):
                    self._logger.error(f"❌ Failed to load all the steps of stage {stage}")
                    return False
                if all(replicas in (self.dag.get_step_replica_count(name), _STEP_UNLOADED_CODE)
                       for name, replicas in status.items()):
                    self._logger.info(f"✅ All the steps from stage {stage} have been loaded!")
                    return True
            time.sleep(self.load_poll_s)

    def _setup_write_buffer(self, use_cache: bool = True) -> None:
        from distilabel.constants import STEPS_OUTPUTS_PATH

        (self._cache_location["data"] / STEPS_OUTPUTS_PATH).mkdir(parents=True, exist_ok=True)  # read at the end
        self._write_buffer = _DiscardOutputs()  # type: ignore[assignment]

    def _is_running(self) -> bool:
        return getattr(self, "_batch_manager", None) is not None

    def _finalize_pipeline_execution(self) -> None:
        self._last_snapshot = -math.inf  # the snapshot taken as the run ends is never skipped
        super()._finalize_pipeline_execution()
