"""Trace datasets from elsewhere, in the factory's columns: for ``prm-score``, ``export``, ``publish`` and ``eval``.

Any parquet or jsonl file (or a folder of them, or a Hub dataset id) whose rows have a problem and either a
thought or assistant messages. Columns are found by their usual names (``question``, ``reasoning``,
``conversations`` with ShareGPT's ``from``/``value``, R1's ``<think>`` inside the assistant turn, …); ids are
assigned where none exist (one per distinct problem, ``sample_index`` counting its traces). The assistant turn is
normalised to ``<thought>…</thought>`` + answer like the factory's own kept traces. Anything else is one line
naming the missing column. A folder written by ``distill run`` is read as it is.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipelines.spec import SpecError
from pipelines.trace.parse import normalise, parse_trace
from prm.jsonl import json_lines

PROBLEM = ("problem", "question", "prompt", "instruction", "query", "input")
THOUGHT = ("thought", "reasoning", "reasoning_content", "thinking", "thinking_trajectory", "deepseek_reasoning",
           "cot", "think")
RESPONSE = ("response", "completion", "output", "attempt", "deepseek_solution", "generation")
MESSAGES = ("messages", "conversations", "conversation", "chat")
GOLD = ("gold", "solution", "ground_truth", "expected_answer", "answer")
IDS = ("problem_id", "id", "uuid", "idx")
TEACHER = ("teacher_model", "model", "generator")
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
         "system": "system"}


def is_factory_folder(path: Path) -> bool:
    """A folder written by ``distill run`` (or ``prm-score``): parquet shards named data-*.parquet."""
    return path.is_dir() and any(path.glob("data-*.parquet"))


def _read_json_lines(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        rows = json.loads(text)
    else:
        rows = [row for _, row in json_lines(path, text=text)]
    return [r for r in rows if isinstance(r, dict)]


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    found = [p for p in sorted(path.rglob("*")) if p.suffix in (".parquet", ".jsonl", ".json")
             and not any(part.startswith((".", "__")) for part in p.relative_to(path).parts)]
    return found


def read_rows(source: str | Path, split: str = "train", flag: str = "--in") -> list[dict[str, Any]]:
    """The raw rows of a local file or folder, or of a Hub dataset id."""
    path = Path(source)
    if path.exists():
        files = _files(path)
        if not files:
            raise SpecError(f"{flag}: no .parquet or .jsonl files in {path}")
        rows: list[dict[str, Any]] = []
        for file in files:
            try:
                rows += pq.read_table(file).to_pylist() if file.suffix == ".parquet" else _read_json_lines(file)
            except UnicodeDecodeError:
                raise SpecError(f"{flag}: {file} is not UTF-8 text; re-encode it as UTF-8") from None
            except (OSError, ValueError) as exc:
                if isinstance(exc, SpecError):
                    raise
                raise SpecError(f"{flag}: cannot read {file} ({type(exc).__name__}: "
                                f"{(str(exc).splitlines() or [''])[0]})") from None
        return rows
    if "/" not in str(source) or str(source).startswith((".", "/")):
        raise SpecError(f"{flag}: {source} does not exist (give a parquet/jsonl file, a folder, or a Hub dataset id)")
    try:
        from datasets import load_dataset

        return load_dataset(str(source), split=split).to_list()
    except Exception as exc:  # noqa: BLE001 - offline, missing, gated: one line
        raise SpecError(f"{flag}: cannot load the Hub dataset {source!r} ({type(exc).__name__}); check the id, "
                        "the network (HF_HUB_OFFLINE) or your login") from None


def _first(row: dict[str, Any], names: Sequence[str]) -> Any:
    for name in names:
        value = row.get(name)
        if value is not None and value != "":
            return value
    return None


def _messages(row: dict[str, Any]) -> list[dict[str, str]] | None:
    raw = _first(row, MESSAGES)
    if not isinstance(raw, list):
        return None
    out = []
    for turn in raw:
        if isinstance(turn, dict):
            role = ROLES.get(str(turn.get("role") or turn.get("from") or "").lower())
            content = turn.get("content", turn.get("value"))
            if role and isinstance(content, str):
                out.append({"role": role, "content": content})
    return out or None


def _column_names(rows: list[dict[str, Any]]) -> str:
    names = sorted({k for r in rows[:100] for k in r})
    return ", ".join(names[:20]) + (", …" if len(names) > 20 else "")


def to_factory_records(rows: list[dict[str, Any]], source: str, flag: str = "--in") -> list[dict[str, Any]]:
    """One factory record per trace (the columns of ``pipelines.store.BASE_SCHEMA``)."""
    if not rows:
        raise SpecError(f"{flag}: {source} has no rows")
    records = []
    for row in rows:
        messages = _messages(row)
        problem = _first(row, PROBLEM)
        if problem is None and messages:
            problem = next((m["content"] for m in messages if m["role"] == "user"), None)
        if not isinstance(problem, str):
            raise SpecError(f"{flag}: {source} has no problem column (one of {', '.join(PROBLEM)}, or a user turn "
                            f"in messages); its columns: {_column_names(rows)}")
        assistant = next((m["content"] for m in reversed(messages or []) if m["role"] == "assistant"), None)
        thought, response = _first(row, THOUGHT), _first(row, RESPONSE)
        completion = assistant if assistant is not None else response
        answer = response
        if completion is not None and thought is None:
            parsed = parse_trace(completion, None)
            thought, answer = (parsed.thought, parsed.answer) if parsed.thought else (None, completion)
        elif assistant is not None and answer is None:
            answer = parse_trace(assistant, None).answer or assistant
        if thought is None and assistant is None:
            raise SpecError(f"{flag}: {source} has neither a thought column (one of {', '.join(THOUGHT)}) nor "
                            f"assistant messages (one of {', '.join(MESSAGES)}); its columns: {_column_names(rows)}")
        if thought is not None:  # the factory's trace format, as its own kept traces have it
            content = normalise(str(thought), str(answer or ""))
            messages = [m for m in (messages or []) if m["role"] != "assistant"] or [{"role": "user",
                                                                                       "content": problem}]
            messages = [*messages, {"role": "assistant", "content": content}]
        kept = row.get("kept")
        records.append({
            "problem_id": _first(row, IDS), "problem": problem, "gold": _none_or_str(_first(row, GOLD)),
            "completion": completion if completion is not None else content, "reasoning_content": None,
            "thought": thought, "answer": answer, "correct": row.get("correct"),
            "kept": True if kept is None else bool(kept),
            "rejection_reason": row.get("rejection_reason") if kept is False else None,
            "messages": messages, "teacher_model": _none_or_str(_first(row, TEACHER)),
            "finish_reason": row.get("finish_reason"), "completion_tokens": _int(row.get("completion_tokens")),
            "prompt_tokens": _int(row.get("prompt_tokens")), "error": None,
        })
    return _assign_ids(records)


def _none_or_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and value == value else None


def _assign_ids(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ids where none exist (one per distinct problem), ordinals, sample indexes and pass rates.

    Records are grouped by problem, in the order problems first appear: a problem's traces are contiguous, as
    in the factory's own folders (``prm-score`` writes whole problems per part).
    """
    index: dict[str, int] = {}
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        key = str(record["problem_id"]) if record["problem_id"] is not None else f"\0{record['problem']}"
        index.setdefault(key, len(index))
        groups[key].append(record)
    out = []
    for key, group in sorted(groups.items(), key=lambda item: index[item[0]]):
        kept = sum(r["kept"] for r in group) / len(group)
        for sample_index, record in enumerate(group):
            record.update(problem_id=str(index[key]) if key.startswith("\0") else key, problem_index=index[key],
                          sample_index=sample_index, pass_rate=kept)
            out.append(record)
    return out


def load_records(source: str | Path, split: str = "train", flag: str = "--in") -> list[dict[str, Any]]:
    """A factory folder's rows as they are, or any other dataset's in the factory's columns."""
    path = Path(source)
    if is_factory_folder(path):
        return [row for shard in sorted(path.glob("data-*.parquet")) for row in pq.read_table(shard).to_pylist()]
    return to_factory_records(read_rows(source, split, flag), str(source), flag)


def load_traces(source: str | Path, split: str = "train", flag: str = "--in") -> Any:
    """``load_records`` as a pandas DataFrame (the factory's columns; ``eval --train`` reads it)."""
    import pandas as pd

    return pd.DataFrame(load_records(source, split, flag))
