"""Issue 26's thought-budget data kinds, derived from the verified traces (``traces/filtered``) as new dataset
folders, as lab/prm_stage.py's ``random_subset`` is, so that `distill export` reads them as it reads a run's:

- ``answer_only``: the same verified samples with the ``<thought>…</thought>`` block stripped: ``completion`` and
  the assistant turn of ``messages`` become the answer, ``thought`` is null, and ``completion_tokens`` loses the
  tokens the thought took. The teacher's per-token log-probabilities (``tokens``, ``logprobs``,
  ``token_logprobs``) belong to the full text, so they are cleared: a KD export scores the stripped turn with the
  teacher (``--teacher-url``), and one without a scorer drops the rows as ``no_logprobs`` rather than align them
  with tokens that are not there.
- ``shortest``: one trace per problem, the shortest verified one by completion tokens (ties: the lowest sample
  index, which is the lower row: `distill run` writes a problem's samples in order). That is `distill select`'s
  own rule when no PRM scored the traces and the budget covers every problem, so the lab runs that command
  (:func:`shortest_argv`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOGPROB_COLUMNS = ("tokens", "token_logprobs", "logprobs")


def _table(traces: Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = sorted(traces.glob("data-*.parquet"))
    if not shards:
        raise ValueError(f"{traces}: no data-*.parquet (not a dataset folder)")
    return pa.concat_tables([pq.read_table(s) for s in shards], promote_options="default")


def _mean(values: list[Any]) -> float | None:
    known = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool) and v == v]
    return round(sum(known) / len(known), 1) if known else None


def data_stats(folder: Path) -> dict[str, Any]:
    """The kept rows of a dataset folder and their mean completion tokens (what a student of it trains on)."""
    table = _table(folder)
    columns = [c for c in ("kept", "completion_tokens") if c in table.column_names]
    rows = [r for r in table.select(columns).to_pylist() if r.get("kept")]
    return {"rows": len(rows), "mean_completion_tokens": _mean([r.get("completion_tokens") for r in rows])}


def answer_only(traces: Path, out: Path, count_tokens: Callable[[str], int] | None = None) -> dict[str, Any]:
    """Write the verified rows of ``traces`` without their thought into ``out`` (``__meta__`` copied, the report
    in ``__meta__/answer-only.json``); returns the report. ``count_tokens`` (the teacher's tokenizer) recounts
    ``completion_tokens``: the stored count less the tokens the thought took; without it the count is null."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.store import meta_dir, write_text_atomic
    from pipelines.trace.parse import parse_trace

    table = _table(traces)
    rows = [r for r in table.to_pylist() if r.get("kept")]
    if not rows:
        raise ValueError(f"answer only: {traces} has no verified traces")
    before = [r.get("completion_tokens") for r in rows]
    for row in rows:
        answer = row.get("answer") or parse_trace(row.get("completion"), row.get("reasoning_content")).answer
        messages = row.get("messages") or []
        if not answer or not messages or messages[-1]["role"] != "assistant":
            raise ValueError(f"answer only: {row['problem_id']} sample {row.get('sample_index')} is kept without "
                             "an answer or an assistant turn")
        answer = answer.strip()
        full = row.get("completion") or messages[-1]["content"]
        if count_tokens is not None and row.get("completion_tokens") is not None:
            removed = count_tokens(full) - count_tokens(answer)
            row["completion_tokens"] = max(1, int(row["completion_tokens"]) - removed)
        else:
            row["completion_tokens"] = None
        row.update(completion=answer, thought=None, reasoning_content=None, answer=answer)
        row["messages"] = [*messages[:-1], {"role": "assistant", "content": answer}]
        for column in LOGPROB_COLUMNS:
            if column in row:
                row[column] = None
    out.mkdir(parents=True, exist_ok=True)
    meta_dir(out).mkdir(exist_ok=True)
    for old in out.glob("data-*.parquet"):
        old.unlink()
    tmp = out / ".data-00000.tmp"
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), tmp)
    tmp.replace(out / "data-00000-of-00001.parquet")
    for name in ("spec.yaml", "stats.json"):
        if (meta_dir(traces) / name).is_file():
            shutil.copyfile(meta_dir(traces) / name, meta_dir(out) / name)
    report = {"source": str(traces), "rows": len(rows),
              "mean_completion_tokens": _mean([r["completion_tokens"] for r in rows]),
              "source_mean_completion_tokens": _mean(before)}
    write_text_atomic(meta_dir(out) / "answer-only.json", json.dumps(report, indent=2) + "\n")
    return report


def shortest_argv(traces: Path, out: Path) -> list[str]:
    """`distill select`'s arguments that keep the shortest verified trace of every problem: a budget of every
    problem with a verified trace, no pass-rate cap, no PRM score."""
    table = _table(traces)
    problems = {r["problem_id"] for r in table.select(["problem_id", "kept"]).to_pylist() if r["kept"]}
    if not problems:
        raise ValueError(f"shortest: {traces} has no verified traces")
    return ["select", str(traces), "--budget", str(len(problems)), "--out", str(out)]
