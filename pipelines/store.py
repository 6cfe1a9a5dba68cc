"""The dataset on disk: atomic part files while running, then parquet shards and stats.json.

Each part file holds whole problems (all their samples), written to a temporary name and renamed,
so a run killed at any point leaves only complete parts; a rerun skips the problems found there.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

PARTS = "parts"
META = "__meta__"  # pyarrow skips "_"/"." names and datasets "__"/"." ones: DIR stays a clean parquet folder


def meta_dir(out_dir: Path) -> Path:
    """Where stats.json and the spec used live, beside the parquet shards."""
    return out_dir / META

BASE_SCHEMA = pa.schema([
    ("problem_id", pa.string()), ("problem_index", pa.int64()), ("sample_index", pa.int32()),
    ("problem", pa.string()), ("gold", pa.string()), ("completion", pa.string()),
    ("reasoning_content", pa.string()), ("thought", pa.string()), ("answer", pa.string()),
    ("correct", pa.bool_()), ("kept", pa.bool_()), ("rejection_reason", pa.string()),
    ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
    ("teacher_model", pa.string()), ("finish_reason", pa.string()),
    ("completion_tokens", pa.int64()), ("prompt_tokens", pa.int64()), ("pass_rate", pa.float64()),
    ("error", pa.string()),  # why the teacher request failed, e.g. "HTTP 503 (5 attempts)"; else null
])
LOGPROB_FIELDS = [
    ("tokens", pa.list_(pa.string())), ("token_logprobs", pa.list_(pa.float64())),
    ("prompt_token_ids", pa.list_(pa.int64())),  # the teacher's exact prompt: logprobs are only valid after it
    ("logprobs", pa.list_(pa.list_(pa.struct([("token", pa.string()), ("logprob", pa.float64())])))),
]
PRM_FIELDS = [("step_scores", pa.list_(pa.float64())), ("prm_score", pa.float64()),
              ("prm_first_error", pa.int64())]
VERIFY_FIELDS = [("similarity_score", pa.float64()), ("judge_score", pa.float64()), ("judge_reason", pa.string())]
_INTERNAL = {"text", "reasoning", "needs_judge"}
RETRIED_REASONS = ("teacher_error", "judge_error")  # a rerun asks again for problems with these


def flatten(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per sample from rows that carry a problem and its ``samples``."""
    records = []
    for row in rows:
        for index, sample in enumerate(row["samples"]):
            record = {k: v for k, v in sample.items() if k not in _INTERNAL}
            record.update(problem_id=row["problem_id"], problem_index=row["problem_index"], sample_index=index,
                          problem=row["problem"], gold=row["gold"], teacher_model=row.get("model_name"),
                          pass_rate=row.get("pass_rate"))
            records.append(record)
    return records


def records_schema(records: list[dict[str, Any]]) -> pa.Schema:
    """The part schema for these records: the base columns plus the optional ones they carry."""
    fields = list(BASE_SCHEMA)
    present = set().union(*(r.keys() for r in records)) if records else set()
    fields += [pa.field(n, t) for n, t in LOGPROB_FIELDS + PRM_FIELDS + VERIFY_FIELDS if n in present]
    return pa.schema(fields)


def write_part(cache_dir: Path, records: list[dict[str, Any]]) -> Path | None:
    """Write one part file atomically; returns its path (None for no records)."""
    if not records:
        return None
    parts = cache_dir / PARTS
    parts.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(records, schema=records_schema(records))
    first = min(r["problem_index"] for r in records)
    final = parts / f"part-{first:010d}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = parts / f".{final.name}.tmp"
    try:
        pq.write_table(table, tmp)
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
    except BaseException as exc:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half part behind (and frees what it took)
        raise as_os_error(exc, parts) from None
    os.replace(tmp, final)
    return final


def as_os_error(exc: BaseException, path: Path) -> BaseException:
    """A full disk as ``OSError(ENOSPC)`` naming the folder (pyarrow names no file, sometimes gives no errno)."""
    if isinstance(exc, OSError) and (exc.errno == errno.ENOSPC or "No space left on device" in str(exc)):
        return OSError(errno.ENOSPC, "No space left on device", str(path))
    return exc


def part_files(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / PARTS).glob("part-*.parquet"))


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` in one step: a reader (or a run killed midway) sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def remove_stale_temps(cache_dir: Path, out_dir: Path) -> list[Path]:
    """Delete the temporary files a killed run left (never complete data); call under the run lock."""
    stale = [*(cache_dir / PARTS).glob(".*.tmp"), *cache_dir.glob(".*.tmp"), *out_dir.glob(".data-*.tmp"),
             *meta_dir(out_dir).glob(".*.tmp")]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def done_problem_ids(cache_dir: Path) -> set[str]:
    """Problems already written by an earlier (possibly killed) run."""
    done: set[str] = set()
    for part in part_files(cache_dir):
        done.update(pq.read_table(part, columns=["problem_id"]).column(0).to_pylist())
    return done


def _versions(parts: list[Path]) -> dict[str, tuple[int, int]]:
    """Per problem, ``(failed samples, index of the part)`` of the version whose rows the dataset keeps.

    A rerun asks the teacher again for problems whose samples failed there (``teacher_error``) and appends
    the answers as new parts; nothing is rewritten, so a crash at any point loses nothing. Of the versions of
    a problem the one with the fewest failed samples wins, the earliest part on a tie.
    """
    best: dict[str, tuple[int, int]] = {}
    for index, part in enumerate(parts):
        table = pq.read_table(part, columns=["problem_id", "rejection_reason"])
        failed: Counter[str] = Counter()
        for pid, reason in zip(*table.to_pydict().values(), strict=True):
            failed[pid] += reason in RETRIED_REASONS
        for pid, count in failed.items():
            if pid not in best or (count, index) < best[pid]:
                best[pid] = (count, index)
    return best


def failed_problem_ids(cache_dir: Path) -> set[str]:
    """Problems whose best version still has samples the teacher failed on: a rerun asks for them again."""
    return {pid for pid, (failed, _) in _versions(part_files(cache_dir)).items() if failed}


def _tables(parts: list[Path], schema: pa.Schema) -> Iterator[pa.Table]:
    for part in parts:
        table = pq.read_table(part)
        for field in schema:
            if field.name not in table.column_names:
                table = table.append_column(field, pa.nulls(len(table), field.type))
        yield table.select(schema.names).cast(schema)


def finalize(cache_dir: Path, out_dir: Path, rows_per_file: int, run_info: dict[str, Any],
             filters: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge the parts into ``out_dir/data-XXXXX.parquet`` and write ``stats.json``; returns the stats.

    ``filters`` is the run plan's filter report (what dedupe and decontamination dropped); without it, the one
    an earlier run left in the cache."""
    parts = part_files(cache_dir)
    schema = pa.unify_schemas([pq.read_schema(p) for p in parts]) if parts else BASE_SCHEMA
    out_dir.mkdir(parents=True, exist_ok=True)
    # stats.json is written last: while it is missing the shards may be mid-replacement (rerun to finish).
    (meta_dir(out_dir) / "stats.json").unlink(missing_ok=True)
    stale = set(out_dir.glob("data-*.parquet"))
    tag = uuid.uuid4().hex[:6]
    written: list[Path] = []
    writer, rows_in_file = None, 0
    collector = StatsCollector()
    versions = _versions(parts)
    try:
        for index, table in enumerate(_tables(parts, schema)):
            # Every problem once: only the rows of its chosen version (see _versions).
            keep = [versions[pid][1] == index for pid in table.column("problem_id").to_pylist()]
            table = table.filter(pa.array(keep, type=pa.bool_()))
            collector.add(table)
            offset = 0
            while offset < table.num_rows:  # fill each shard to exactly rows_per_file rows, parts notwithstanding
                if writer is None or rows_in_file >= rows_per_file:
                    if writer:
                        writer.close()
                    written.append(out_dir / f".data-{len(written):05d}-{tag}.tmp")
                    writer, rows_in_file = pq.ParquetWriter(written[-1], schema), 0
                chunk = table.slice(offset, rows_per_file - rows_in_file)
                writer.write_table(chunk)
                rows_in_file += chunk.num_rows
                offset += chunk.num_rows
        if writer:
            writer.close()
    except BaseException as exc:  # a full disk: no half shard stays; the old shards and the parts are intact
        if writer:
            with contextlib.suppress(Exception):
                writer.close()
        for tmp in written:
            tmp.unlink(missing_ok=True)
        raise as_os_error(exc, out_dir) from None
    for old in stale:
        old.unlink()
    for i, tmp in enumerate(written):
        os.replace(tmp, out_dir / f"data-{i:05d}-of-{len(written):05d}.parquet")
    stats = collector.result(run_info)
    if filters is None:
        from pipelines.filters.apply import read_report

        filters = read_report(cache_dir)
    stats.update(filters)  # "dedupe" and "decontamination": problems dropped before generation
    meta_dir(out_dir).mkdir(exist_ok=True)
    write_text_atomic(meta_dir(out_dir) / "stats.json", json.dumps(stats, indent=2) + "\n")
    return stats


def score_distribution(values: list[float]) -> dict[str, float | int]:
    """Count, mean and quantiles of per-sample scores (similarity, judge) for stats.json and the card."""
    ordered = sorted(values)

    def quantile(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)

    return {"count": len(ordered), "mean": round(statistics.fmean(ordered), 4), "min": round(ordered[0], 4),
            "p10": quantile(0.1), "median": quantile(0.5), "p90": quantile(0.9), "max": round(ordered[-1], 4)}


class StatsCollector:
    """Counts per rejection reason, pass rates and token statistics over the written samples."""

    def __init__(self) -> None:
        self.reasons: Counter[str] = Counter()
        self.samples = self.kept = self.correct = self.verified = 0
        self.problems: set[str] = set()
        self.solved: set[str] = set()
        self.tokens: list[int] = []
        self.kept_tokens: list[int] = []
        self.scores: dict[str, list[float]] = {"similarity_score": [], "judge_score": []}

    def add(self, table: pa.Table) -> None:
        for name, values in self.scores.items():
            if name in table.column_names:
                values.extend(v for v in table.column(name).to_pylist() if v is not None)
        cols = table.select(["problem_id", "kept", "correct", "rejection_reason", "completion_tokens"]).to_pydict()
        for pid, kept, correct, reason, tokens in zip(*cols.values(), strict=True):
            self.samples += 1
            self.problems.add(pid)
            self.reasons[reason or "kept"] += 1
            if correct is not None:
                self.verified += 1
                self.correct += bool(correct)
            if kept:
                self.kept += 1
                self.solved.add(pid)
            if tokens is not None:
                self.tokens.append(tokens)
                if kept:
                    self.kept_tokens.append(tokens)

    def result(self, run_info: dict[str, Any]) -> dict[str, Any]:
        wall = run_info.get("wall_time_s") or 0.0
        total_tokens = sum(self.tokens)
        return {
            "problems": len(self.problems), "samples": self.samples, "kept": self.kept,
            "rejected": self.samples - self.kept,
            "pass_rate": round(self.kept / self.samples, 4) if self.samples else 0.0,
            "correct_rate": round(self.correct / self.verified, 4) if self.verified else None,
            "problems_with_kept_trace": len(self.solved),
            "reasons": dict(sorted(self.reasons.items())),
            "tokens": {
                "completion_total": total_tokens,
                "completion_mean": round(statistics.fmean(self.tokens), 1) if self.tokens else 0,
                "completion_median": statistics.median(self.tokens) if self.tokens else 0,
                "completion_max": max(self.tokens, default=0),
                "kept_mean": round(statistics.fmean(self.kept_tokens), 1) if self.kept_tokens else 0,
            },
            **{f"{name}s": score_distribution(values)
               for name, values in self.scores.items() if values},
            "wall_time_s": round(wall, 2),
            "tokens_per_s": round(total_tokens / wall, 1) if wall else None,
            **{k: v for k, v in run_info.items() if k != "wall_time_s"},
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
