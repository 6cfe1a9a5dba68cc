"""Eval sets: one YAML per benchmark (``distill/eval/sets/<name>.yaml``), validated by pydantic at load time.

A set names its Hub dataset and the fields to read, the prompt, the verification method, the default sampling
protocol, a small local copy written for this project (``--offline``: tests, smoke runs), and which training
data counts as in-distribution for it (see leakage.py). ``materialize`` writes the problems evaluated, in the
factory's source format (problem_id, problem, answer), so that every model sees exactly the same file.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from pipelines.spec import PromptConfig, SimilarityConfig, SpecError, Strict, _one_line
from pipelines.store import write_text_atomic

SETS_DIR = Path(__file__).parent / "sets"


class SetSource(Strict):
    """Where a set's problems are and which fields hold what."""

    path: str  # a Hub dataset id or a local .jsonl/.parquet file
    config: str | list[str] | None = None  # several configs (BBH's tasks) are read one after another
    split: str = "test"
    problem_field: str = "problem"
    answer_field: str = "answer"
    id_field: str | None = None
    # Multiple choice: a list of option texts, or {"text": [...], "label": [...]} (ARC); the gold is then a
    # label ("B", or ARC's "2") or an index into the options (``answer_is_index``).
    choices_field: str | None = None
    answer_is_index: bool = False

    @property
    def is_local(self) -> bool:
        return self.path.endswith((".jsonl", ".json", ".parquet")) or Path(self.path).exists()

    @property
    def configs(self) -> list[str | None]:
        return list(self.config) if isinstance(self.config, list) else [self.config]


class Distribution(Strict):
    """Training data that is in-distribution for this set: by its spec's source.path or name."""

    sources: list[str] = []  # Hub ids or local file stems
    specs: list[str] = []  # spec names


class EvalSet(Strict):
    name: str
    description: str = ""
    family: str  # the task family, shown in the report (e.g. competition-math)
    source: SetSource
    local: SetSource | None = None  # the shipped copy written for this project (relative to the YAML)
    prompt: PromptConfig = PromptConfig()
    verification: Literal["math", "exact", "choice", "similarity"] = "math"
    similarity: SimilarityConfig = SimilarityConfig()
    samples: int = Field(4, ge=1, le=1024)
    temperature: float = Field(0.6, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(32768, ge=1)
    in_distribution: Distribution = Distribution()


def shipped_sets() -> list[str]:
    return sorted(p.stem for p in SETS_DIR.glob("*.yaml"))


def load_set(name_or_path: str) -> EvalSet:
    """A shipped set by name or a set YAML by path; local paths are resolved against the YAML's folder."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = SETS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise SpecError(f"--set: unknown eval set {name_or_path!r}; give a set YAML or one of: "
                        f"{', '.join(shipped_sets())}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        eval_set = EvalSet.model_validate(data)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: not a readable YAML file ({type(exc).__name__})") from None
    except ValidationError as exc:
        raise SpecError(f"{path}: {_one_line(exc)}") from None
    for source in (eval_set.source, eval_set.local):
        if source is not None and source.is_local and not Path(source.path).is_absolute():
            source.path = str((path.parent / source.path).resolve())
    return eval_set


def _rows(source: SetSource) -> Iterator[dict[str, Any]]:
    if source.is_local:
        from pipelines.source import _local_rows

        if not Path(source.path).is_file():
            raise SpecError(f"source.path: file {source.path!r} does not exist")
        yield from _local_rows(Path(source.path))
        return
    from datasets import load_dataset

    for config in source.configs:
        try:
            rows = load_dataset(source.path, config, split=source.split)
        except Exception as exc:  # noqa: BLE001 - the datasets library raises many types here
            raise SpecError(f"source.path: cannot load Hub dataset {source.path!r}"
                            f"{f' ({config})' if config else ''} ({type(exc).__name__}); check the network, or "
                            "use the shipped copy with --offline") from None
        for index, row in enumerate(rows):
            yield {**row, "_config": config, "_index": index}


def _options(value: Any) -> tuple[list[str], list[str]]:
    """(labels, texts) of a choices field; labels default to A, B, C, …"""
    if isinstance(value, dict):
        texts = [str(t) for t in value.get("text") or []]
        labels = [str(label) for label in value.get("label") or []] or list(string.ascii_uppercase[:len(texts)])
    elif isinstance(value, list):
        texts = [str(t) for t in value]
        labels = list(string.ascii_uppercase[:len(texts)])
    else:
        raise SpecError(f"source.choices_field: expected a list of options or {{text, label}}, "
                        f"got {type(value).__name__}")
    return labels, texts


def problem_row(eval_set: EvalSet, source: SetSource, row: dict[str, Any], index: int) -> dict[str, str]:
    """One problem in the factory's source format; multiple choice gets lettered options and a letter gold."""
    for field in (source.problem_field, source.answer_field, source.choices_field, source.id_field):
        if field and field not in row:
            raise SpecError(f"{eval_set.name}: source field {field!r} is not in the data "
                            f"(columns: {', '.join(sorted(k for k in row if not k.startswith('_')))})")
    problem, answer = str(row[source.problem_field]).strip(), row[source.answer_field]
    if source.choices_field:
        labels, texts = _options(row[source.choices_field])
        letters = string.ascii_uppercase[:len(texts)]
        problem += "\n\n" + "\n".join(f"({letter}) {text}" for letter, text in zip(letters, texts, strict=True))
        if source.answer_is_index:
            answer = letters[int(answer)]
        else:  # ARC labels its options A-D or 1-4; the gold is the matching letter
            answer = letters[labels.index(str(answer).strip().strip("()"))]
    config = row.get("_config")
    raw_id = row[source.id_field] if source.id_field else row.get("_index", index)
    problem_id = f"{config}/{raw_id}" if config else str(raw_id)
    return {"problem_id": problem_id, "problem": problem, "answer": str(answer)}


def set_problems(eval_set: EvalSet, offline: bool, limit: int | None = None) -> list[dict[str, str]]:
    """The problems of a set (the shipped copy with ``offline``), the first ``limit`` of them."""
    source = eval_set.local if offline and eval_set.local else eval_set.source
    rows: Iterable[dict[str, Any]] = _rows(source)
    problems = []
    for index, row in enumerate(rows):
        if limit is not None and len(problems) >= limit:
            break
        problems.append(problem_row(eval_set, source, row, index))
    if not problems:
        raise SpecError(f"{eval_set.name}: {source.path} has no problems")
    ids = [p["problem_id"] for p in problems]
    if len(set(ids)) != len(ids):
        raise SpecError(f"{eval_set.name}: problem ids repeat in {source.path}; fix source.id_field")
    return problems


def materialize(problems: list[dict[str, str]], path: Path) -> str:
    """Write the problems as jsonl (atomically) and return their sha256, which keys the runs made on them."""
    text = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in problems)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        write_text_atomic(path, text)
    return hashlib.sha256(text.encode()).hexdigest()
