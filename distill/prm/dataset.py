"""``distill prm-score``: add the PRM columns to an existing dataset folder and re-filter it.

DIR2 gets the same layout as DIR (``data-*.parquet`` + ``__meta__/stats.json``), written through
pipelines.store: scored records go to part files under ``DIR2/.cache/prm-score``, then ``finalize``
merges them and recomputes the stats (the ``prm`` rejections included). DIR2 may be DIR.
``--in`` may also be a dataset from elsewhere (``pipelines/foreign.py``): any parquet/jsonl file or folder, or a
Hub id, with a problem and a thought or assistant messages.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.foreign import is_factory_folder, load_records
from pipelines.run.progress import Progress
from pipelines.spec import SpecError
from pipelines.store import finalize, meta_dir, part_files, write_part
from prm.filter import score_samples

COMPUTED_STATS = {"problems", "samples", "kept", "rejected", "pass_rate", "correct_rate", "problems_with_kept_trace",
                  "reasons", "tokens", "tokens_per_s", "finished_at", "prm"}


def dataset_shards(in_dir: Path) -> list[Path]:
    shards = sorted(in_dir.glob("data-*.parquet"))
    if not shards:
        raise SpecError(f"--in: no data-*.parquet files in {in_dir}; give a folder written by `distill run`")
    return shards


def foreign_records(in_dir: Path) -> list[dict[str, Any]] | None:
    """None for a factory folder (streamed shard by shard); else the dataset in the factory's columns."""
    return None if is_factory_folder(in_dir) else load_records(in_dir, flag="--in")


def _set_pass_rates(parts: list[Path], counts: dict[str, list[int]]) -> None:
    """Rewrite each part's ``pass_rate`` from the problem's kept fraction over all its samples."""
    for part in parts:
        table = pq.read_table(part)
        rates = [counts[pid][0] / counts[pid][1] for pid in table.column("problem_id").to_pylist()]
        column = table.schema.get_field_index("pass_rate")
        table = table.set_column(column, pa.field("pass_rate", pa.float64()), pa.array(rates, pa.float64()))
        tmp = part.with_name(f".{part.name}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, part)


def _rows_per_file(spec_text: str | None, shards: list[Path]) -> int:
    """The spec's output.rows_per_file, so DIR2 is sharded like DIR; without a spec, the largest shard."""
    import yaml

    from pipelines.spec import OutputConfig

    spec = yaml.safe_load(spec_text) if spec_text else None
    if isinstance(spec, dict):
        return int((spec.get("output") or {}).get("rows_per_file") or OutputConfig().rows_per_file)
    return max(pq.ParquetFile(s).metadata.num_rows for s in shards) or 1


def _previous_run_info(in_dir: Path) -> dict[str, Any]:
    stats_file = meta_dir(in_dir) / "stats.json"
    if not stats_file.exists():
        return {}
    return {k: v for k, v in json.loads(stats_file.read_text()).items() if k not in COMPUTED_STATS}


def score_dataset(scorer: Any, in_dir: Path, out_dir: Path, chunk_rows: int = 512,
                  foreign: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Score every shard of ``in_dir`` (or the ``foreign`` records read from it) into ``out_dir``; returns the new
    stats (with a ``prm`` section)."""
    if foreign is None and not is_factory_folder(in_dir):
        foreign = foreign_records(in_dir)
    if foreign is None:
        shards = dataset_shards(in_dir)
        run_info = _previous_run_info(in_dir)
        spec_path = meta_dir(in_dir) / "spec.yaml"
        spec_text = spec_path.read_text() if spec_path.exists() else None
        rows_per_file = _rows_per_file(spec_text, shards)
        total = sum(pq.ParquetFile(shard).metadata.num_rows for shard in shards)
        batches = (b.to_pylist() for shard in shards for b in pq.ParquetFile(shard).iter_batches(batch_size=chunk_rows))
    else:
        from pipelines.spec import OutputConfig

        run_info = {"source": in_dir.name, "teacher_model": next((r["teacher_model"] for r in foreign
                                                                  if r.get("teacher_model")), None)}
        spec_text, rows_per_file, total = None, OutputConfig().rows_per_file, len(foreign)
        batches = (foreign[i:i + chunk_rows] for i in range(0, len(foreign), chunk_rows))
    cache = out_dir / ".cache" / "prm-score"
    shutil.rmtree(cache, ignore_errors=True)
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    progress = Progress("prm-score", total, unit="samples")
    done = [0, 0]  # samples, kept

    def score_and_write(records: list[dict[str, Any]]) -> None:
        records = score_samples(scorer, records, [r["problem"] for r in records], scorer.cfg.score_rejected)
        for record in records:
            counts[record["problem_id"]][0] += bool(record.get("kept"))
            counts[record["problem_id"]][1] += 1
        write_part(cache, records)
        done[0] += len(records)
        done[1] += sum(bool(r.get("kept")) for r in records)
        stats = scorer.stats.as_dict()
        short = f"kept {done[1]} · {stats['traces_per_s']} traces/s"
        progress.update(done[0], f"{done[0]}/{total} samples, kept {done[1]}, {stats['scored']} traces scored "
                        f"({stats['traces_per_s']} traces/s)", short)

    # A part holds whole problems (finalize keeps one part's version of each problem). A problem's samples
    # are contiguous in the dataset, so the last problem of a chunk waits for the next chunk.
    pending: list[dict[str, Any]] = []
    with progress:
        for batch in batches:
            pending += batch
            last = pending[-1]["problem_id"]
            ready = next((i for i, r in enumerate(pending) if r["problem_id"] == last), len(pending))
            if ready:
                score_and_write(pending[:ready])
                pending = pending[ready:]
        if pending:
            score_and_write(pending)
    _set_pass_rates(part_files(cache), counts)
    cfg = scorer.cfg
    run_info["prm"] = {"model": cfg.model, "style": cfg.style, "backend": cfg.backend,
                       "aggregation": cfg.aggregation, "threshold": cfg.threshold,
                       **scorer.stats.as_dict()}
    out_dir.mkdir(parents=True, exist_ok=True)
    if spec_text is not None and in_dir.resolve() != out_dir.resolve():
        meta_dir(out_dir).mkdir(exist_ok=True)
        (meta_dir(out_dir) / "spec.yaml").write_text(spec_text)
    stats = finalize(cache, out_dir, rows_per_file, run_info)
    shutil.rmtree(cache, ignore_errors=True)
    return stats
