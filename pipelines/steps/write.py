"""Write each finished batch as an atomic part file and report progress."""

import time
from pathlib import Path

from distilabel.steps import Step, StepInput
from distilabel.typing import StepOutput

from pipelines.engines.process_tree import request_stop
from pipelines.errors import error_line
from pipelines.store import flatten, write_part


class WriteParts(Step):
    """Leaf step: persists whole problems, logs problems done, kept rate and tokens/s."""

    cache_dir: str
    total_problems: int | None = None

    @property
    def inputs(self) -> list[str]:
        return ["problem_id", "samples"]

    @property
    def outputs(self) -> list[str]:
        return ["problem_id"]

    def load(self) -> None:
        super().load()
        self._started = time.monotonic()
        self._problems = self._samples = self._kept = self._tokens = 0

    def process(self, inputs: StepInput) -> StepOutput:  # type: ignore[override]
        records = flatten(inputs)
        try:
            write_part(Path(self.cache_dir), records)
        except OSError as exc:  # a full disk: stop the whole run (distilabel would drop the batch and go on)
            request_stop(error_line(exc))
            raise
        self._problems += len(inputs)
        self._samples += len(records)
        self._kept += sum(bool(r["kept"]) for r in records)
        self._tokens += sum(r.get("completion_tokens") or 0 for r in records)
        elapsed = max(time.monotonic() - self._started, 1e-9)
        of_total = f"/{self.total_problems}" if self.total_problems else ""
        self._logger.info(
            f"progress: {self._problems}{of_total} problems, {self._samples} samples, "
            f"kept {self._kept / max(self._samples, 1):.1%}, {self._tokens / elapsed:.0f} tokens/s"
        )
        yield [{"problem_id": row["problem_id"]} for row in inputs]
