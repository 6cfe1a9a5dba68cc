"""Leakage and distribution of an eval set relative to the training data (``--train DIR``, dataset folders).

Leakage reuses the factory's decontamination index (pipelines/filters/decontaminate.py): an eval problem is
leaked when it shares a word n-gram (8 by default) with a training problem, or, shorter than n words, equals one
after normalisation. Leaked problems are left out of the headline numbers; the report shows both.

In-distribution rule, per set: a training folder is in-distribution for the set when its spec
(``__meta__/spec.yaml``) reads from one of the set's ``in_distribution.sources`` (a Hub id, or a local file whose
stem is listed) or is named in ``in_distribution.specs``, or when at least half of the set's problems have the
*shape* of a training problem (its normalised words with every number replaced by ``#``: templated tasks such as
the lab's ``34 + 57``). The set is in-distribution when any training folder is, else OOD; without ``--train``
it is not labelled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distill.eval.sets import EvalSet
from pipelines.filters.decontaminate import NgramIndex, normalise_words
from pipelines.spec import SpecError

SHAPE_SHARE = 0.5


@dataclass
class TrainFolder:
    path: Path
    problems: list[str]
    spec_name: str | None = None
    source_path: str | None = None
    shapes: set[str] = field(default_factory=set)


def problem_shape(text: str) -> str:
    return " ".join(re.sub(r"\d+", "#", word) for word in normalise_words(text))


def read_train_folder(path: Path) -> TrainFolder:
    """The unique problems of a dataset folder and what its spec says about their source."""
    import pandas as pd

    shards = sorted(path.glob("data-*.parquet")) if path.is_dir() else []
    if not shards:
        raise SpecError(f"--train: {path} is not a dataset folder (no data-*.parquet); give a folder that "
                        "`distill run` wrote")
    problems = pd.read_parquet(path, columns=["problem"])["problem"].dropna().unique().tolist()
    folder = TrainFolder(path, problems, shapes={problem_shape(p) for p in problems})
    spec_file = path / "__meta__" / "spec.yaml"
    if spec_file.is_file():
        spec: Any = yaml.safe_load(spec_file.read_text(encoding="utf-8")) or {}
        folder.spec_name = spec.get("name")
        folder.source_path = (spec.get("source") or {}).get("path")
    return folder


def leaked(problems: list[dict[str, str]], folders: list[TrainFolder], ngram: int) -> dict[str, dict[str, Any]]:
    """Per leaked problem id: the training folder and the shared n-gram (or the whole short text)."""
    if not folders:
        return {}
    index = NgramIndex(ngram)
    for folder in folders:
        index.add(str(folder.path), folder.problems)
    hits = {}
    for problem in problems:
        hit = index.match(problem["problem"])
        if hit:
            hits[problem["problem_id"]] = {"train": hit.benchmark, "train_index": hit.benchmark_index,
                                           "ngram": hit.ngram}
    return hits


def _source_matches(source_path: str | None, sources: list[str]) -> bool:
    if not source_path:
        return False
    return source_path in sources or Path(source_path).stem in sources


def distribution(eval_set: EvalSet, problems: list[dict[str, str]], folders: list[TrainFolder]) -> dict[str, str]:
    """``{"label": "in-distribution" | "OOD" | "unlabelled", "reason": …}`` by the rule in the module doc."""
    if not folders:
        return {"label": "unlabelled", "reason": "no --train folder given"}
    wanted = eval_set.in_distribution
    for folder in folders:
        if _source_matches(folder.source_path, wanted.sources):
            return {"label": "in-distribution", "reason": f"{folder.path} reads {folder.source_path}"}
        if folder.spec_name in wanted.specs:
            return {"label": "in-distribution", "reason": f"{folder.path} was made by spec {folder.spec_name!r}"}
        share = sum(problem_shape(p["problem"]) in folder.shapes for p in problems) / max(len(problems), 1)
        if share >= SHAPE_SHARE:
            return {"label": "in-distribution",
                    "reason": f"{share:.0%} of the problems have the shape of {folder.path}'s problems"}
    names = ", ".join(str(f.path) for f in folders)
    return {"label": "OOD", "reason": f"no training folder ({names}) reads this set's sources, is named for it, "
                                      "or has its problems' shape"}
