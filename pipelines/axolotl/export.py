"""Export a dataset folder's kept traces in Axolotl's formats, optionally as curriculum stages.

``sft``: ``messages`` (system / user / assistant ``<thought>…</thought>\\n\\nanswer``), trained with
``type: chat_template`` on the assistant turn only. ``kd``: the same plus ``logprobs`` and ``target_token_ids``,
the teacher's top-k distributions aligned to the student's tokens (see ``kd_align``), read by
``type: axolotl.integrations.kd.chat_template``. Rows that cannot be used are dropped and counted by
reason in ``export.json``, which ``distill config`` reads.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel, ConfigDict, Field

from pipelines.axolotl.curriculum import CurriculumConfig, difficulties, quantile, split_stages
from pipelines.axolotl.kd_align import KDFormatError, axolotl_columns, build_kd_targets, student_turn
from pipelines.axolotl.shared_tokenizer import check_shared_tokenizer, load_tokenizer
from pipelines.spec import SpecError

MANIFEST = "export.json"


class ExportOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["sft", "kd"] = "sft"
    file_format: Literal["parquet", "jsonl"] = "parquet"
    student: str | None = None  # tokenizer (path or Hub id) the rows are measured and aligned with
    teacher_tokenizer: str | None = None  # optional: compare vocabularies before a KD export
    max_seq_len: int = Field(4096, ge=16)
    min_coverage: float = Field(0.9, ge=0.0, le=1.0)
    curriculum: CurriculumConfig | None = None


def read_kept(dataset_dir: Path) -> Iterator[dict[str, Any]]:
    """The kept samples of a dataset folder, one dict each, streamed shard by shard."""
    shards = sorted(dataset_dir.glob("data-*.parquet"))
    if not shards:
        raise SpecError(f"DATASET_DIR: no data-*.parquet shards in {dataset_dir}; run `distill run SPEC --out DIR` "
                        "first")
    for shard in shards:
        for batch in pq.ParquetFile(shard).iter_batches(batch_size=256):
            for row in batch.to_pylist():
                if row.get("kept"):
                    yield row


def _spec_teacher(dataset_dir: Path) -> dict[str, Any]:
    path = dataset_dir / "__meta__" / "spec.yaml"
    spec = yaml.safe_load(path.read_text()) if path.exists() else None
    return (spec or {}).get("teacher") or {}


def _top_k(teacher: dict[str, Any], rows: list[dict[str, Any]]) -> int:
    if teacher.get("top_logprobs"):
        return int(teacher["top_logprobs"])
    sizes = Counter(len(d) for row in rows for d in (row.get("logprobs") or [])[:64] if d)
    if not sizes:
        raise SpecError("--format kd: the dataset has no top-k logprobs; set teacher.top_logprobs: K in the spec "
                        "(vLLM teacher) and run it again, or export --format sft")
    return sizes.most_common(1)[0][0]


def export_rows(rows: list[dict[str, Any]], options: ExportOptions, tokenizer: Any, top_k: int | None,
                dropped: Counter[str]) -> list[dict[str, Any]]:
    """The Axolotl rows for the kept samples; unusable ones are counted in ``dropped`` by reason."""
    out = []
    for row in rows:
        messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"] or []]
        if not messages or messages[-1]["role"] != "assistant":
            dropped["no_assistant_turn"] += 1
            continue
        record: dict[str, Any] = {"messages": messages, "problem_id": row["problem_id"],
                                  "sample_index": row["sample_index"], "pass_rate": row.get("pass_rate"),
                                  "length": row.get("completion_tokens") or len(messages[-1]["content"])}
        if tokenizer is not None:
            turn = student_turn(tokenizer, messages)
            if turn is None:
                dropped["template_mismatch"] += 1
                continue
            if len(turn.input_ids) > options.max_seq_len:
                dropped["too_long"] += 1
                continue
            record["length"] = turn.content_end - turn.content_start
            record["seq_len"] = len(turn.input_ids)
        if options.format == "kd":
            if not row.get("tokens") or not row.get("logprobs"):
                dropped["no_logprobs"] += 1
                continue
            try:
                targets = build_kd_targets(turn, row["tokens"], row["logprobs"], top_k, len(tokenizer))
            except KDFormatError:
                dropped["bad_logprobs"] += 1
                continue
            if targets.coverage < options.min_coverage:
                dropped["low_coverage"] += 1
                continue
            record.update(axolotl_columns(targets), kd_coverage=round(targets.coverage, 4),
                          kd_exact=targets.exact)
        out.append(record)
    return out


def _write(rows: list[dict[str, Any]], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".jsonl":
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    else:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
    tmp.replace(path)


def export_dataset(dataset_dir: Path, out_dir: Path, options: ExportOptions) -> dict[str, Any]:
    """Write the export (one file, or stage1/stage2) and ``export.json``; returns the manifest."""
    if options.format == "kd" and not options.student:
        raise SpecError("--student: a KD export aligns the teacher's logprobs to the student's tokens; "
                        "give the student model (path or Hub id)")
    rows = list(read_kept(dataset_dir))
    teacher = _spec_teacher(dataset_dir)
    tokenizer = load_tokenizer(options.student) if options.student else None
    top_k = None
    if options.format == "kd":
        top_k = _top_k(teacher, rows)
        check_shared_tokenizer(tokenizer, rows, options.student,
                               load_tokenizer(options.teacher_tokenizer) if options.teacher_tokenizer else None)
    dropped: Counter[str] = Counter()
    records = export_rows(rows, options, tokenizer, top_k, dropped)
    if not records:
        raise SpecError(f"DATASET_DIR: no exportable rows in {dataset_dir} ({len(rows)} kept, dropped "
                        f"{dict(dropped)}); check the run's stats.json")
    for record, score in zip(records, difficulties([r["pass_rate"] for r in records],
                                                   [r["length"] for r in records]), strict=True):
        record["difficulty"] = score
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = ".jsonl" if options.file_format == "jsonl" else ".parquet"
    files = []
    if options.curriculum:
        first, second = split_stages([r["pass_rate"] for r in records], [r["length"] for r in records],
                                     options.curriculum)
        if not first or not second:
            raise SpecError(f"--curriculum: stage {1 if not first else 2} is empty ({len(records)} rows); "
                            "change --stage1-min-pass-rate / --stage1-max-length-quantile")
        stages = [("stage1", [records[i] for i in first]), ("stage2", [records[i] for i in second])]
    else:
        stages = [("train", records)]
    for name, stage_rows in stages:
        _write(stage_rows, out_dir / f"{name}{suffix}")
        files.append({"stage": name, "path": f"{name}{suffix}", "rows": len(stage_rows)})
    manifest = {
        "format": options.format, "file_format": options.file_format, "source": str(dataset_dir.resolve()),
        "student": options.student, "teacher_model": rows[0].get("teacher_model") if rows else None,
        "teacher_temperature": teacher.get("temperature"), "top_k": top_k,
        "max_seq_len": options.max_seq_len,
        "longest_seq_len": max((r.get("seq_len") or 0 for r in records), default=0) or None,
        "kept_in_source": len(rows), "rows": len(records), "dropped": dict(sorted(dropped.items())),
        "files": files,
    }
    if options.format == "kd":
        manifest["kd"] = {"exact_alignments": sum(r["kd_exact"] for r in records),
                          "mean_coverage": round(sum(r["kd_coverage"] for r in records) / len(records), 4),
                          "min_coverage": options.min_coverage}
    if options.curriculum:
        manifest["curriculum"] = {**options.curriculum.model_dump(), "stage1_max_length": quantile(
            [r["length"] for r in records], options.curriculum.stage1_max_length_quantile)}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(export_dir: Path) -> dict[str, Any]:
    path = export_dir / MANIFEST
    if not path.is_file():
        raise SpecError(f"--dataset: {export_dir} has no {MANIFEST}; run `distill export DATASET_DIR --out "
                        f"{export_dir}` first")
    return json.loads(path.read_text())
