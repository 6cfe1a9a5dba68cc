"""Curate the samples already in a cache again, after the verification or the PRM changed: no teacher needed.

Each part keeps the teacher's raw answer (``completion``, ``reasoning_content``, ``finish_reason``, ``error``);
parsing, verification and the PRM are recomputed from it exactly as the pipeline's curate and prm steps do,
and the part is replaced atomically under the same name, so a crash halfway leaves every part whole (the
fingerprint is recorded only after the last one, so the next run finishes the job).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.spec import DatasetSpec
from pipelines.steps.curate import NEEDS_JUDGE, curate_sample
from pipelines.store import PRM_FIELDS, VERIFY_FIELDS, part_files, records_schema

log = logging.getLogger("distill")
PRM_COLUMNS = [name for name, _ in PRM_FIELDS]
STALE_COLUMNS = {*PRM_COLUMNS, *(name for name, _ in VERIFY_FIELDS)}  # recomputed below


def recurate_records(records: list[dict[str, Any]], spec: DatasetSpec, scorer: Any = None,
                     judge_api_key: str | None = None) -> list[dict[str, Any]]:
    """The records of whole problems, curated by ``spec`` (judged by its judge, scored by ``scorer`` when it has
    a PRM)."""
    out = []
    judge_mode = spec.judge.mode if spec.judge else None
    for record in records:
        # a judge failure is the judge's, not the teacher's: the teacher's answer is still there to curate
        error = None if (record.get("error") or "").startswith("judge: ") else record.get("error")
        sample = {"text": record.get("completion"), "reasoning": record.get("reasoning_content"),
                  "finish_reason": record.get("finish_reason"), "error": error}
        fresh = {k: v for k, v in record.items() if k not in STALE_COLUMNS}
        fresh["error"] = error
        fresh.update(curate_sample(sample, record["problem"], record.get("gold"), spec.verification, spec.prompt,
                                   spec.similarity, spec.code, judge_mode))
        out.append(fresh)
    if spec.judge is not None:
        from pipelines.steps.judge import judge_samples

        judge_samples(out, spec.judge, spec.verification, judge_api_key)
    for record in out:
        record.pop(NEEDS_JUDGE, None)
    if scorer is not None:
        from prm.filter import score_samples

        out = score_samples(scorer, out, [r["problem"] for r in out], spec.prm.score_rejected)
    kept: dict[str, list[bool]] = defaultdict(list)
    for record in out:
        kept[record["problem_id"]].append(bool(record["kept"]))
    for record in out:
        flags = kept[record["problem_id"]]
        record["pass_rate"] = sum(flags) / len(flags)
    return out


def recurate_cache(cache_dir: Path, spec: DatasetSpec, judge_api_key: str | None = None) -> int:
    """Re-curate every part in place; returns the number of samples."""
    scorer = None
    if spec.prm is not None:
        from prm.scorer import PrmScorer, check_config

        check_config(spec.prm)
        scorer = PrmScorer(spec.prm)
    samples = 0
    parts = part_files(cache_dir)
    log.info("verification, judge or PRM settings changed: curating the %d parts already generated again "
             "(no teacher requests)", len(parts))
    for part in parts:
        records = recurate_records(pq.read_table(part).to_pylist(), spec, scorer, judge_api_key)
        tmp = part.with_name(f".{part.name}.tmp")
        pq.write_table(pa.Table.from_pylist(records, schema=records_schema(records)), tmp)
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, part)
        samples += len(records)
    return samples
