"""Load problems from the spec's source, skipping the ones a previous run already wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distilabel.steps import GeneratorStep

from pipelines.filters.apply import ProblemFilter
from pipelines.source import iter_problems
from pipelines.spec import DecontaminationConfig, DedupeConfig, SourceConfig


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
        return ["problem_id", "problem_index", "problem", "gold"]

    def process(self, offset: int = 0) -> Any:  # type: ignore[override]
        skip = set(self.skip_ids)
        batch: list[dict] = []
        # Filtering sees every problem, done or not, so a resumed run drops exactly the same ones.
        problems = ProblemFilter(self.dedupe, self.decontamination)
        for index, row in problems.apply(iter_problems(self.source, self.limit)):
            if row["problem_id"] in skip:
                continue
            batch.append({**row, "problem_index": index})
            if len(batch) == self.batch_size:
                yield batch, False
                batch = []
        if self.report_dir:
            problems.write_report(Path(self.report_dir))
        yield batch, True
