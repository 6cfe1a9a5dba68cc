"""Export a dataset folder's kept traces in Axolotl's formats, optionally as curriculum stages.

``sft``: ``messages`` (system / user / assistant ``<thought>…</thought>\\n\\nanswer``), trained with
``type: chat_template`` on the assistant turn only. ``kd``: the same plus ``logprobs`` and ``target_token_ids``,
the teacher's top-k distributions at every position of the student's exact tokens (see ``kd_align``): from a
teacher scoring pass when a scorer is given (which also writes ``target_token_logprob``, the teacher's
log-probability of each following token), else from the run's own logprobs where they provably belong to
those tokens. Read by ``type: distill.axolotl.kd_plugin.chat_template`` (raw, for the factory's KD plugin) or
Axolotl's ``axolotl.integrations.kd.chat_template`` (renormalised). Rows that cannot be used are dropped and
counted by reason in ``export.json``, which ``distill config`` reads; it also records the distribution
(raw log-probabilities at temperature 1, k, the tokenizer's hash) that the config declares.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel, ConfigDict, Field

from distill.axolotl.curriculum import CurriculumConfig, difficulties, quantile, split_stages
from distill.axolotl.kd_align import (
    KDFormatError,
    axolotl_columns,
    student_turn,
    targets_from_generation,
    targets_from_scores,
)
from distill.axolotl.shared_tokenizer import check_scorer_tokenizer, check_shared_tokenizer, load_tokenizer
from distill.kd.score import Scorer
from pipelines.spec import SpecError

MANIFEST = "export.json"
SCORE_CHUNK = 64  # sequences per scoring call
DEFAULT_SCORED_TOP_K = 20  # vLLM's default --max-logprobs


class ExportOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["sft", "kd"] = "sft"
    file_format: Literal["parquet", "jsonl"] = "parquet"
    student: str | None = None  # tokenizer (path or Hub id) the rows are measured and aligned with
    teacher_tokenizer: str | None = None  # optional: compare vocabularies before a KD export
    max_seq_len: int = Field(4096, ge=16)
    top_k: int | None = Field(None, ge=1, le=20)  # kd: default the run's teacher.top_logprobs (scored: else 20)
    curriculum: CurriculumConfig | None = None


def read_kept(dataset_dir: Path) -> Iterator[dict[str, Any]]:
    """The kept samples of a dataset folder, one dict each, streamed shard by shard; a dataset from elsewhere
    (``pipelines/foreign.py``) in the factory's columns."""
    from pipelines.foreign import is_factory_folder, load_records

    if not is_factory_folder(dataset_dir):
        yield from (row for row in load_records(dataset_dir, flag="DATASET_DIR") if row.get("kept"))
        return
    shards = sorted(dataset_dir.glob("data-*.parquet"))
    for shard in shards:
        for batch in pq.ParquetFile(shard).iter_batches(batch_size=256):
            for row in batch.to_pylist():
                if row.get("kept"):
                    yield row


def _spec_teacher(dataset_dir: Path) -> dict[str, Any]:
    """The teacher section of the run's effective spec (``__meta__/spec.yaml``); empty for a foreign dataset."""
    path = dataset_dir / "__meta__" / "spec.yaml"
    spec = yaml.safe_load(path.read_text()) if path.exists() else None
    return (spec or {}).get("teacher") or {}


def _top_k(options: ExportOptions, teacher: dict[str, Any], rows: list[dict[str, Any]], scored: bool) -> int:
    stored = int(teacher["top_logprobs"]) if teacher.get("top_logprobs") else None
    if not stored:
        sizes = Counter(len(d) for row in rows for d in (row.get("logprobs") or [])[:64] if d)
        stored = sizes.most_common(1)[0][0] if sizes else None
    if scored:
        return options.top_k or stored or DEFAULT_SCORED_TOP_K
    if not stored:
        raise SpecError("--format kd: the dataset has no top-k logprobs; give the teacher for a scoring pass "
                        "(--teacher-url URL --teacher-model NAME, or --teacher-model PATH), or set "
                        "teacher.top_logprobs: K in the spec and run it again")
    if options.top_k and options.top_k > stored:
        raise SpecError(f"--top-k: the run stored the top {stored}; give at most {stored} or a teacher to score with")
    return options.top_k or stored


def tokenizer_sha256(tokenizer: Any) -> str:
    """A fingerprint of the vocabulary, merges and chat template the targets' ids belong to."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256((text + (tokenizer.chat_template or "")).encode()).hexdigest()


def export_rows(rows: list[dict[str, Any]], options: ExportOptions, tokenizer: Any, top_k: int | None,
                dropped: Counter[str], scorer: Scorer | None = None) -> list[dict[str, Any]]:
    """The Axolotl rows for the kept samples; unusable ones are counted in ``dropped`` by reason."""
    out = []
    turns = []
    for row in rows:
        messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"] or []]
        if not messages or messages[-1]["role"] != "assistant":
            dropped["no_assistant_turn"] += 1
            continue
        record: dict[str, Any] = {"messages": messages, "problem_id": row["problem_id"],
                                  "sample_index": row["sample_index"], "pass_rate": row.get("pass_rate"),
                                  "length": row.get("completion_tokens") or len(messages[-1]["content"])}
        if row.get("source"):  # a `distill mix` dataset: which folder the trace came from
            record["source"] = row["source"]
        turn = None
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
        if options.format == "kd" and scorer is None:
            if not row.get("tokens") or not row.get("logprobs"):
                dropped["no_logprobs"] += 1
                continue
            try:
                targets = targets_from_generation(turn, row.get("prompt_token_ids"), row["tokens"], row["logprobs"],
                                                  top_k, len(tokenizer))
            except KDFormatError:
                dropped["bad_logprobs"] += 1
                continue
            if targets is None:  # the run's logprobs belong to other tokens than the student's
                dropped["not_provable"] += 1
                continue
            record.update(axolotl_columns(targets), kd_targets=targets.source)
        out.append(record)
        turns.append(turn)
    if options.format == "kd" and scorer is not None:
        from pipelines.run.progress import Progress

        with Progress("kd scoring", len(out), unit="traces") as progress:
            for start in range(0, len(out), SCORE_CHUNK):
                chunk = turns[start:start + SCORE_CHUNK]
                scores = scorer.score([t.input_ids for t in chunk], top_k)
                for record, turn, per_position in zip(out[start:start + SCORE_CHUNK], chunk, scores, strict=True):
                    targets = targets_from_scores(turn, per_position, top_k, len(tokenizer))
                    record.update(axolotl_columns(targets), kd_targets=targets.source)
                done = min(start + SCORE_CHUNK, len(out))
                progress.update(done, f"{done}/{len(out)} traces scored by the teacher", "scored by the teacher")
    return out


def _write(rows: list[dict[str, Any]], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".jsonl":
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    else:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
    tmp.replace(path)


def export_dataset(dataset_dir: Path, out_dir: Path, options: ExportOptions,
                   scorer: Scorer | None = None) -> dict[str, Any]:
    """Write the export (one file, or stage1/stage2) and ``export.json``; returns the manifest."""
    if options.format == "kd" and not options.student:
        raise SpecError("--student: a KD export gives the teacher's distribution on the student's tokens; "
                        "give the student model (path or Hub id)")
    rows = list(read_kept(dataset_dir))
    teacher = _spec_teacher(dataset_dir)
    tokenizer = load_tokenizer(options.student) if options.student else None
    top_k = None
    if options.format == "kd":
        top_k = _top_k(options, teacher, rows, scored=scorer is not None)
        if scorer is not None:
            check_scorer_tokenizer(scorer, tokenizer, rows, options.student)
        else:
            check_shared_tokenizer(tokenizer, rows, options.student,
                                   load_tokenizer(options.teacher_tokenizer) if options.teacher_tokenizer else None)
    dropped: Counter[str] = Counter()
    records = export_rows(rows, options, tokenizer, top_k, dropped, scorer)
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
        "student": options.student,
        "teacher_model": (rows[0].get("teacher_model") if rows else None) or teacher.get("model"),
        # from the run's effective spec (__meta__/spec.yaml): what it used, the command line's overrides included
        "teacher_num_samples": teacher.get("num_samples"),
        "teacher_sampling_temperature": teacher.get("temperature"), "top_k": top_k,
        "max_seq_len": options.max_seq_len,
        "longest_seq_len": max((r.get("seq_len") or 0 for r in records), default=0) or None,
        "kept_in_source": len(rows), "rows": len(records), "dropped": dict(sorted(dropped.items())),
        "files": files,
    }
    if options.format == "kd":
        sources = Counter(r["kd_targets"] for r in records)
        manifest["kd"] = {
            "targets": {"scored": sources["scored"], "generation": sources["generation"]},
            "scorer": scorer.description if scorer is not None else None,
            # rows with `target_token_logprob` (the teacher's log-probability of each following token): scored rows
            "target_token_logprob": sum("target_token_logprob" in r for r in records),
            # what the stored log-probabilities are: the teacher's raw distribution (temperature 1), k most likely
            "distribution": {"logprobs": "raw", "temperature": 1.0, "top_k": top_k,
                             "tokenizer_sha256": tokenizer_sha256(tokenizer)},
        }
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
