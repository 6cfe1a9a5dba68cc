"""Load the problems the run's plan left to do (pipelines/run/plan.py), in batches; the source is not read here."""

from __future__ import annotations

from typing import Any

from distilabel.steps import GeneratorStep
from pydantic import Field

END_OF_STREAM = "end_of_stream"  # True on the last problem only


class LoadProblems(GeneratorStep):
    """Stream ``problem_id``, ``problem_index``, ``problem``, ``gold`` rows in batches from ``problems``.

    ``problems`` is ``RunPlan.pending()``: an Arrow table, already filtered and without the problems an earlier
    run wrote. It is excluded from distilabel's dump and signature (it would copy every problem into them).
    """

    problems: Any = Field(default=None, exclude=True, repr=False)

    @property
    def outputs(self) -> list[str]:
        return ["problem_id", "problem_index", "problem", "gold", END_OF_STREAM]

    def process(self, offset: int = 0) -> Any:  # type: ignore[override]
        table = self.problems
        count = table.num_rows if table is not None else 0
        # The last batch is never empty (distilabel would never hand an empty last batch on, and the run would
        # hang) and its final row says so, which lets the generation step drain.
        for start in range(0, max(count, 1), self.batch_size):
            rows = table.slice(start, self.batch_size).to_pylist() if count else []
            batch = [{**row, END_OF_STREAM: False} for row in rows]
            last = start + self.batch_size >= count
            if last and batch:
                batch[-1][END_OF_STREAM] = True
            yield batch, last
