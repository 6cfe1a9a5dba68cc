"""A run's plan, computed once: which problems the filters keep, which are done, which the teacher failed on.

``make_plan`` is the one place a run reads its source: one pass through ``iter_problems`` (so the source's
checks, encoding, JSON, ids and sizes, all happen here, before the run takes its lock or writes anything) and
through the filters, built once. The plan is then handed on: the load step streams the problems left to do from
it, progress and the completeness check count against its total, and ``stats.json`` gets its filter report.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipelines.filters.apply import ProblemFilter
from pipelines.source import iter_problems
from pipelines.spec import DatasetSpec, SpecError
from pipelines.store import done_problem_ids, failed_problem_ids


@dataclass(frozen=True)
class RunPlan:
    """The kept problems in source order (``problem_id``, ``problem_index``, ``problem``, ``gold``, and
    ``prefix`` with ``source.prefix_field``), the filter report, and the cache's done and failed problem ids."""

    problems: pa.Table
    report: dict[str, Any]
    done: frozenset[str] = frozenset()  # written by an earlier run with no failed sample: skipped
    failed: frozenset[str] = frozenset()  # written, but with samples the teacher failed on: asked again

    @property
    def total(self) -> int:
        return self.problems.num_rows

    @property
    def kept_ids(self) -> list[str]:
        return self.problems.column("problem_id").to_pylist()

    @property
    def done_count(self) -> int:
        """Kept problems already done (a cache may also hold problems outside this run's ``--limit``)."""
        return sum(pid in self.done for pid in self.kept_ids)

    @property
    def work_left(self) -> bool:
        """Whether the run asks the teacher for anything (a finished run only writes the dataset again)."""
        return self.done_count < self.total

    def pending(self) -> pa.Table:
        """The kept problems not done yet: what the load step streams to the teacher."""
        if not self.done:
            return self.problems
        keep = [pid not in self.done for pid in self.kept_ids]
        return self.problems.filter(pa.array(keep, type=pa.bool_()))

    def missing(self, cache_dir: Path) -> int:
        """Kept problems that no part file of ``cache_dir`` holds (after a run: what it failed to write)."""
        written = done_problem_ids(cache_dir)
        return sum(pid not in written for pid in self.kept_ids)

    def with_cache(self, cache_dir: Path) -> RunPlan:
        """The same problems with the done and failed ids read again from ``cache_dir`` (under the run's lock,
        after ``--fresh`` or a re-curation changed them); the source is not read again."""
        return replace(self, **_cache_state(cache_dir))


def _cache_state(cache_dir: Path) -> dict[str, frozenset[str]]:
    if not cache_dir.is_dir():
        return {"done": frozenset(), "failed": frozenset()}
    failed = failed_problem_ids(cache_dir)
    return {"done": frozenset(done_problem_ids(cache_dir) - failed), "failed": frozenset(failed)}


def make_plan(spec: DatasetSpec, limit: int | None, cache_dir: Path | None) -> RunPlan:
    """Read the source once through the filters; with ``cache_dir``, what an earlier run already wrote there.

    Raises the source's one-line ``SpecError``s (a missing file, a column, a bad row), and one when no problem
    is left: in the source, or after dedupe and decontamination.
    """
    problems = ProblemFilter(spec.dedupe, spec.decontamination)
    rows: list[dict[str, Any]] = []
    for index, row in problems.apply(iter_problems(spec.source, limit)):
        rows.append({**row, "problem_index": index})
    if problems.seen == 0:
        raise SpecError(f"source.path: {spec.source.path!r} has no problems in field "
                        f"{spec.source.problem_field!r}; check the file or source.problem_field")
    if not rows:
        raise SpecError(f"source.path: {spec.source.path!r} has no problems in field "
                        f"{spec.source.problem_field!r}; check the file or the field name")
    state = _cache_state(cache_dir) if cache_dir is not None else {}
    return RunPlan(problems=_table(rows, spec.source.prefix_field is not None), report=problems.report(), **state)


def _table(rows: list[dict[str, Any]], with_prefix: bool) -> pa.Table:
    """The problems as Arrow: about the size of their text in memory, cheap to hand to the load step's worker."""
    fields = [("problem_id", pa.string()), ("problem_index", pa.int64()), ("problem", pa.string()),
              ("gold", pa.string())] + ([("prefix", pa.string())] if with_prefix else [])
    schema = pa.schema(fields)
    return pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in rows], schema=schema)


def finished_ids(cache_dir: Path) -> frozenset[str]:
    """Problems a run in ``cache_dir`` wrote with no failed sample (what a rerun would not ask for again); read
    from the part files only, for a caller that must decide before a run whether it needs a teacher."""
    return _cache_state(cache_dir)["done"]
