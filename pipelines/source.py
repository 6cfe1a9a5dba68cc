"""Read problems from a local .jsonl/.parquet file or a Hub dataset, streaming, with stable ids."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from pipelines.spec import SourceConfig, SpecError


def _local_rows(path: Path) -> Iterator[dict]:
    if path.suffix == ".parquet":
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            yield from batch.to_pylist()
        return
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                raise SpecError(f"{path}:{lineno}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                                "re-encode the file as UTF-8, e.g. iconv -f latin1 -t utf-8") from None
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SpecError(f"{path}:{lineno}: not valid JSON ({exc.msg}); fix or remove that line") from None
            if not isinstance(row, dict):
                raise SpecError(f"{path}:{lineno}: each line must be a JSON object")
            yield row


def _hub_rows(source: SourceConfig) -> Iterator[dict]:
    from datasets import load_dataset

    try:
        dataset = load_dataset(source.path, source.config, split=source.split, streaming=True)
    except Exception as exc:  # noqa: BLE001 - the datasets library raises many types here
        raise SpecError(
            f"source.path: cannot load Hub dataset {source.path!r} ({type(exc).__name__}); "
            "check the id and network, or point source.path at a local .jsonl/.parquet file"
        ) from None
    yield from dataset


def _check_columns(row: dict, source: SourceConfig) -> None:
    for key in ("problem_field", "answer_field", "id_field", "entry_point_field", "choices_field", "prefix_field"):
        column = getattr(source, key)
        if column and column not in row:
            columns = ", ".join(sorted(row))
            raise SpecError(f"source.{key}: column {column!r} is not in the source (columns: {columns})")


def _gold(row: dict, source: SourceConfig) -> str | None:
    """The gold text: a list (MBPP's test asserts) one item per line; with an entry point, HumanEval's call."""
    gold = row.get(source.answer_field) if source.answer_field else None
    if isinstance(gold, list | tuple):
        gold = "\n".join(str(item) for item in gold)
    if gold is not None and source.entry_point_field and row.get(source.entry_point_field):
        gold = f"{gold}\n\ncheck({row[source.entry_point_field]})\n"
    return None if gold is None else str(gold)


def with_choices(problem: str, gold: str | None, choices: object) -> tuple[str, str | None]:
    """The problem with its options appended as ``(A) text`` lines, and the gold as a letter."""
    if isinstance(choices, dict):
        texts, labels = list(choices.get("text") or []), [str(x) for x in choices.get("label") or []]
    else:
        texts, labels = list(choices or []), []
    if len(labels) != len(texts):
        labels = []
    letters = [chr(ord("A") + i) for i in range(len(texts))]
    renamed = dict(zip(labels or letters, letters, strict=True))
    lines = "\n".join(f"({letter}) {text}" for letter, text in zip(letters, texts, strict=True))
    if gold is not None:
        gold = renamed.get(gold.strip(), gold)
    return f"{problem.rstrip()}\n\n{lines}" if lines else problem, gold


def iter_problems(source: SourceConfig, limit: int | None = None) -> Iterator[dict]:
    """Yield ``{"problem_id", "problem", "gold"}`` (and ``prefix`` with ``prefix_field``); ids are the row index
    unless ``id_field`` is set."""
    if source.is_local:
        path = Path(source.path)
        if not path.is_file():
            raise SpecError(f"source.path: file {str(path)!r} does not exist; check the path in the spec")
        rows = _local_rows(path)
    else:
        rows = _hub_rows(source)
    seen_ids: set[str] = set()
    for index, row in enumerate(rows):
        if limit is not None and index >= limit:
            return
        if index == 0:
            _check_columns(row, source)
        problem = row.get(source.problem_field)
        if not isinstance(problem, str) or not problem.strip():
            continue
        gold = _gold(row, source)
        if source.id_field and row.get(source.id_field) is None:
            raise SpecError(f"source.id_field: row {index} of {source.path} has no {source.id_field!r}; every row "
                            "needs an id (fix the data, or drop id_field to number the rows)")
        problem_id = str(row[source.id_field]) if source.id_field else str(index)
        if source.id_field:
            if problem_id in seen_ids:  # resume goes by id: a repeated id would be skipped as already done
                raise SpecError(f"source.id_field: id {problem_id!r} appears twice in {source.path}; ids must be "
                                "unique (fix the data, or drop id_field to number the rows)")
            seen_ids.add(problem_id)
        if len(problem) > source.max_problem_chars:
            raise SpecError(f"source.max_problem_chars: problem {problem_id!r} of {source.path} has {len(problem):,} "
                            f"characters (limit {source.max_problem_chars:,}); fix that row or raise the limit")
        if source.show_tests and gold:
            shown = "\n".join(gold.splitlines()[:source.show_tests])
            problem = f"{problem.rstrip()}\nYour code should pass these tests:\n\n{shown}"
        if source.choices_field:
            problem, gold = with_choices(problem, gold, row.get(source.choices_field))
        item = {"problem_id": problem_id, "problem": problem, "gold": gold}
        if source.prefix_field:
            item["prefix"] = str(row.get(source.prefix_field) or "")
        yield item
