"""Build the folder that goes to the Hub from a dataset folder: parquet per config, card, histogram, spec, stats.

``--dry-run DIR`` writes exactly this folder; a real publish builds it in a temporary directory and uploads
it, so what a dry run shows is what gets pushed. The source dataset folder is only read. Local paths, server URLs
and key names are removed unless ``keep_local_paths`` (``redact.py``). A dataset from elsewhere (any parquet/jsonl
with a problem and a thought or assistant messages, ``pipelines/foreign.py``) gets its stats computed here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from distill.publish.card import CardInputs, render_card
from distill.publish.configs import hub_configs
from distill.publish.histogram import plot_trace_lengths
from distill.publish.redact import redact_spec, redact_stats, redact_table
from pipelines.spec import SpecError
from pipelines.store import StatsCollector, meta_dir, records_schema

AXOLOTL_DIR = Path(__file__).resolve().parents[2] / "axolotl_configs"
ROWS_PER_SHARD = 100_000


@dataclass
class PublishFolder:
    path: Path
    config_rows: dict[str, int]
    files: list[str]


def read_foreign(source: Path) -> tuple[pa.Table, dict, str]:
    """A dataset from elsewhere in the factory's columns, with its stats computed; it has no spec."""
    from pipelines.foreign import load_records

    records = load_records(source, flag="DATASET_DIR")
    table = pa.Table.from_pylist(records, schema=records_schema(records))
    collector = StatsCollector()
    collector.add(table)
    teacher = next((r["teacher_model"] for r in records if r.get("teacher_model")), None)
    return table, collector.result({"source": source.name if source.exists() else str(source),
                                    "teacher_model": teacher}), ""


def read_dataset(dataset_dir: Path) -> tuple[pa.Table, dict, str]:
    """The samples, stats.json and the verbatim spec of a finished ``distill run`` folder (or a foreign one)."""
    shards = sorted(dataset_dir.glob("data-*.parquet"))
    stats_path, spec_path = meta_dir(dataset_dir) / "stats.json", meta_dir(dataset_dir) / "spec.yaml"
    if not shards and not meta_dir(dataset_dir).exists():
        return read_foreign(dataset_dir)
    if not dataset_dir.is_dir() or not shards or not stats_path.is_file():
        raise SpecError(f"DATASET_DIR: {str(dataset_dir)!r} is not a finished dataset folder (no data-*.parquet "
                        "or __meta__/stats.json); run `distill run SPEC --out DIR` first")
    schemas = [pq.read_schema(s) for s in shards]
    schema = pa.unify_schemas(schemas)
    tables = []
    for shard in shards:
        table = pq.read_table(shard)
        for column in schema:
            if column.name not in table.column_names:
                table = table.append_column(column, pa.nulls(len(table), column.type))
        tables.append(table.select(schema.names))
    stats = json.loads(stats_path.read_text(encoding="utf-8"))
    spec_text = spec_path.read_text(encoding="utf-8") if spec_path.is_file() else ""
    return pa.concat_tables(tables), stats, spec_text


def _write_config(out: Path, name: str, table: pa.Table) -> list[str]:
    folder = out / "data" / name
    folder.mkdir(parents=True, exist_ok=True)
    count = max(1, -(-table.num_rows // ROWS_PER_SHARD))
    names = []
    for i in range(count):
        path = folder / f"train-{i:05d}-of-{count:05d}.parquet"
        pq.write_table(table.slice(i * ROWS_PER_SHARD, ROWS_PER_SHARD), path)
        names.append(str(path.relative_to(out)))
    return names


def build_folder(dataset_dir: Path, out: Path, repo_id: str, keep_local_paths: bool = False) -> PublishFolder:
    """Write the Hub layout of ``dataset_dir`` into ``out`` (which must be new or empty)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SpecError(f"--dry-run: {str(out)!r} is not empty; give a new or empty folder")
    table, stats, spec_text = read_dataset(dataset_dir)
    if not keep_local_paths:
        table, stats, spec_text = redact_table(table), redact_stats(stats), redact_spec(spec_text)
    configs = hub_configs(table)
    out.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    for name, config_table in configs.items():
        files += _write_config(out, name, config_table)
    columns = table.select(["kept", "completion_tokens"]).to_pydict()
    kept = [t for k, t in zip(columns["kept"], columns["completion_tokens"], strict=True) if k and t is not None]
    rejected = [t for k, t in zip(columns["kept"], columns["completion_tokens"], strict=True)
                if not k and t is not None]
    plot_trace_lengths(kept, rejected, out / "trace_lengths.png")
    (out / "spec.yaml").write_text(spec_text, encoding="utf-8")
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    axolotl = sorted(p.name for p in AXOLOTL_DIR.glob("*.yaml")) if AXOLOTL_DIR.is_dir() else []
    config_rows = {name: t.num_rows for name, t in configs.items()}
    card = render_card(CardInputs(repo_id=repo_id, stats=stats, spec_text=spec_text, config_rows=config_rows,
                                  histogram="trace_lengths.png", axolotl_configs=axolotl,
                                  redacted=not keep_local_paths))
    (out / "README.md").write_text(card, encoding="utf-8")
    files += ["trace_lengths.png", "spec.yaml", "stats.json", "README.md"]
    return PublishFolder(out, config_rows, sorted(files))
