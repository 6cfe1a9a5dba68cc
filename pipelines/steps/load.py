"""Load problems from the spec's source, skipping the ones a previous run already wrote."""

from __future__ import annotations

from typing import Any

from distilabel.steps import GeneratorStep

from pipelines.source import iter_problems
from pipelines.spec import SourceConfig


class LoadProblems(GeneratorStep):
    """Stream ``problem_id``, ``problem_index``, ``problem``, ``gold`` rows in batches."""

    source: SourceConfig
    limit: int | None = None
    skip_ids: list[str] = []

    @property
    def outputs(self) -> list[str]:
        return ["problem_id", "problem_index", "problem", "gold"]

    def process(self, offset: int = 0) -> Any:  # type: ignore[override]
        skip = set(self.skip_ids)
        batch: list[dict] = []
        for index, row in enumerate(iter_problems(self.source, self.limit)):
            if row["problem_id"] in skip:
                continue
            batch.append({**row, "problem_index": index})
            if len(batch) == self.batch_size:
                yield batch, False
                batch = []
        yield batch, True
