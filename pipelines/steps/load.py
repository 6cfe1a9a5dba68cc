"""Load problems from the spec's source, skipping the ones a previous run already wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distilabel.steps import GeneratorStep

from pipelines.filters.apply import ProblemFilter
from pipelines.source import iter_problems
from pipelines.spec import DecontaminationConfig, DedupeConfig, SourceConfig

END_OF_STREAM = "end_of_stream"  # True on the last problem only


class LoadProblems(GeneratorStep):
    """Stream ``problem_id``, ``problem_index``, ``problem``, ``gold`` rows in batches."""

    source: SourceConfig
    limit: int | None = None
    skip_ids: list[str] = []
    dedupe: DedupeConfig = DedupeConfig()
    decontamination: DecontaminationConfig = DecontaminationConfig()
    report_dir: str | None = None  # where the filter report goes (the run's cache dir)

    @property
    def outputs(self) -> list[str]:
        return ["problem_id", "problem_index", "problem", "gold", END_OF_STREAM]

    def process(self, offset: int = 0) -> Any:  # type: ignore[override]
        skip = set(self.skip_ids)
        batch: list[dict] = []
        # Filtering sees every problem, done or not, so a resumed run drops exactly the same ones.
        problems = ProblemFilter(self.dedupe, self.decontamination)
        # One row of lookahead: the last batch is never empty (distilabel would never hand an empty last
        # batch on, and the run would hang) and its final row says so, which lets the generation step drain.
        pending: dict | None = None
        for index, row in problems.apply(iter_problems(self.source, self.limit)):
            if row["problem_id"] in skip:
                continue
            if pending is not None:
                batch.append(pending)
                if len(batch) == self.batch_size:
                    yield batch, False
                    batch = []
            pending = {**row, "problem_index": index, END_OF_STREAM: False}
        if self.report_dir:
            problems.write_report(Path(self.report_dir))
        if pending is not None:
            batch.append({**pending, END_OF_STREAM: True})
        yield batch, True
