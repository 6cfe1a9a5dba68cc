"""distilabel's local ``Pipeline`` with its per-batch bookkeeping made cheap, so its main process keeps up.

distilabel 1.5's main process routes every batch between the steps. Profiled with ``bench/throughput.py
--instant`` (py-spy), most of its CPU went to three things that scale with batches, not rows, and do no
routing: a snapshot of its own state after every batch (``pipeline.yaml``, the batch manager), recomputing the
pipeline's signature to name the cache folder on every batch, and rendering two INFO lines per step and batch
with rich. At a few hundred rows/s on a busy machine that starved the teacher window. Here the snapshot is
taken at most every ``snapshot_every_s`` and always at the end (the factory resumes from its own part files,
``pipelines/store.py``, so the snapshot is only a diagnostic), the cache location is computed once per run,
and the per-batch chatter is dropped (the write step's progress line stays).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from distilabel.pipeline import Pipeline

# distilabel's step wrapper logs these two at INFO for every step and batch.
PER_BATCH_CHATTER = ("📦 Processing batch", "📨 Step '")


class DropPerBatchChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and str(record.msg).startswith(PER_BATCH_CHATTER))


class ThrottledPipeline(Pipeline):
    """A ``Pipeline`` whose per-batch bookkeeping is rate-limited or computed once (see the module doc)."""

    snapshot_every_s = 5.0
    _last_snapshot = -math.inf
    _location: Any = None

    def run(self, *args: Any, **kwargs: Any) -> Any:
        self._location = None  # the steps are final now: compute the cache location once for this run
        self._last_snapshot = -math.inf
        try:
            return super().run(*args, **kwargs)
        finally:
            self._location = None

    @property
    def _cache_location(self) -> Any:
        if self._location is None:
            location = Pipeline._cache_location.fget(self)  # type: ignore[attr-defined]
            if not self._is_running():
                return location
            self._location = location
        return self._location

    def _is_running(self) -> bool:
        return getattr(self, "_batch_manager", None) is not None

    def _cache(self) -> None:
        now = time.monotonic()
        if now - self._last_snapshot < self.snapshot_every_s:
            return
        self._last_snapshot = now
        super()._cache()

    def _finalize_pipeline_execution(self) -> None:
        self._last_snapshot = -math.inf  # the snapshot taken as the run ends is never skipped
        super()._finalize_pipeline_execution()

    def _output_queue_loop(self) -> None:
        # Runs in the main process once logging is set up: filter what the step processes send it.
        from distilabel.utils import logging as distilabel_logging

        listener = distilabel_logging.queue_listener
        for handler in listener.handlers if listener is not None else ():
            handler.addFilter(DropPerBatchChatter())
        super()._output_queue_loop()
