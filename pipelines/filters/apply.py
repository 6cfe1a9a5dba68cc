"""Run decontamination then dedupe over the problem stream and keep a report of what was dropped.

The report (``<cache>/filters.json``) is merged into ``stats.json`` under ``decontamination`` and
``dedupe`` by ``store.finalize``. Both filters are deterministic, so a resumed run drops the same problems.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pipelines.filters.decontaminate import NgramIndex
from pipelines.filters.dedupe import Deduplicator
from pipelines.spec import BenchmarkConfig, DecontaminationConfig, DedupeConfig, SpecError

REPORT = "filters.json"


def benchmark_texts(benchmark: BenchmarkConfig, position: int) -> list[str]:
    """The problem texts of one benchmark (local file or Hub dataset)."""
    where = f"decontamination.benchmarks[{position}]"
    if benchmark.is_local:
        from pipelines.source import _local_rows

        path = Path(benchmark.path)
        if not path.is_file():
            raise SpecError(f"{where}.path: file {str(path)!r} does not exist; check the path in the spec")
        rows: Iterable[dict] = _local_rows(path)
    else:
        from datasets import load_dataset

        try:
            rows = load_dataset(benchmark.path, benchmark.config, split=benchmark.split)
        except Exception as exc:  # noqa: BLE001 - the datasets library raises many types here
            raise SpecError(f"{where}.path: cannot load Hub dataset {benchmark.path!r} ({type(exc).__name__}); "
                            "check the id, config and split, or point it at a local .jsonl/.parquet file") from None
    texts = []
    for row in rows:
        if benchmark.field not in row:
            raise SpecError(f"{where}.field: column {benchmark.field!r} is not in {benchmark.path} "
                            f"(columns: {', '.join(sorted(row))})")
        if isinstance(row[benchmark.field], str):
            texts.append(row[benchmark.field])
    return texts


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


class ProblemFilter:
    """``apply(problems)`` yields ``(index, problem)`` for the problems kept; ``report()`` says why others went."""

    def __init__(self, dedupe: DedupeConfig, decontamination: DecontaminationConfig) -> None:
        self.dedupe_config = dedupe
        self.decontamination_config = decontamination
        self.index = NgramIndex(decontamination.ngram, decontamination.max_df, decontamination.min_overlap,
                                decontamination.min_shared)
        for position, benchmark in enumerate(decontamination.benchmarks):
            self.index.add(benchmark.label, benchmark_texts(benchmark, position))
        self.deduplicator = (Deduplicator(dedupe.near_threshold, dedupe.num_perm, dedupe.shingle_size)
                             if dedupe.enabled else None)
        self.seen = 0
        self.contaminated: list[dict[str, Any]] = []
        self.duplicates: list[dict[str, Any]] = []

    def apply(self, problems: Iterable[dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
        for index, problem in enumerate(problems):
            self.seen += 1
            where = {"problem_id": problem["problem_id"], "problem_index": index}
            hit = self.index.match(problem["problem"]) if len(self.index) else None
            if hit:
                self.contaminated.append({**where, "benchmark": hit.benchmark,
                                          "benchmark_index": hit.benchmark_index, "ngram": hit.ngram,
                                          "overlap": hit.overlap, "shared_ngrams": hit.shared,
                                          "problem": _clip(problem["problem"]),
                                          "benchmark_problem": _clip(hit.benchmark_problem)})
                continue
            duplicate = self.deduplicator.check(problem["problem_id"], problem["problem"]) \
                if self.deduplicator else None
            if duplicate:
                self.duplicates.append({**where, "kind": duplicate.kind, "duplicate_of": duplicate.duplicate_of,
                                        "similarity": duplicate.similarity})
                continue
            yield index, problem

    def report(self) -> dict[str, Any]:
        kinds = [d["kind"] for d in self.duplicates]
        config = self.dedupe_config
        return {
            "decontamination": {
                "ngram": self.decontamination_config.ngram, "max_df": self.decontamination_config.max_df,
                "min_overlap": self.decontamination_config.min_overlap,
                "min_shared": self.decontamination_config.min_shared,
                "benchmarks": [{"name": name, "problems": size} for name, size in self.index.sizes.items()],
                "checked": self.seen, "contaminated": len(self.contaminated), "dropped": self.contaminated,
            },
            "dedupe": {
                "enabled": config.enabled, "near_threshold": config.near_threshold, "num_perm": config.num_perm,
                "checked": self.seen - len(self.contaminated), "exact": kinds.count("exact"),
                "near": kinds.count("near"), "dropped": self.duplicates,
            },
        }


def write_report(cache_dir: Path, report: dict[str, Any]) -> Path:
    """Atomically write a filter report (``ProblemFilter.report()``) beside the part files."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / REPORT
    tmp = cache_dir / f".{REPORT}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_report(cache_dir: Path) -> dict[str, Any]:
    """The last filter report of a run (empty when the run predates the filters)."""
    path = cache_dir / REPORT
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
