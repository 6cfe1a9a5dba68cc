"""``distill select DIR --budget N --out DIR2``: write the selection as a dataset folder of its own.

DIR2 has the layout of a ``distill run`` folder (so ``distill export`` and ``distill publish`` take it): the
selected rows with a ``selection_reason`` column, ``__meta__/spec.yaml`` copied, ``__meta__/selection.json`` (the
report) and ``__meta__/stats.json`` (the run's stats with the report under ``selection``, which the card shows).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq
import typer

from distill.command import fail, flag_error
from distill.select.selection import SelectConfig, select
from pipelines.spec import SpecError
from pipelines.store import meta_dir, write_text_atomic

REPORT = "selection.json"


def read_rows(dataset_dir: Path) -> tuple[pa.Table, list[dict]]:
    shards = sorted(dataset_dir.glob("data-*.parquet"))
    if not shards or not (meta_dir(dataset_dir) / "stats.json").is_file():
        raise SpecError(f"DATASET_DIR: {dataset_dir} is not a finished dataset folder (no data-*.parquet or "
                        "__meta__/stats.json); run `distill run SPEC --out DIR` first")
    table = pa.concat_tables([pq.read_table(s) for s in shards], promote_options="default")
    columns = [c for c in ("problem_id", "problem", "kept", "correct", "pass_rate", "prm_score",
                           "completion_tokens", "completion") if c in table.column_names]
    return table, table.select(columns).to_pylist()


def select_folder(dataset_dir: Path, out: Path, config: SelectConfig) -> dict:
    """Select from ``dataset_dir`` into ``out``; returns the report."""
    if out.resolve() == dataset_dir.resolve():
        raise SpecError("--out: must differ from DATASET_DIR (the selection is a new folder)")
    table, rows = read_rows(dataset_dir)
    selection = select(rows, config)
    chosen = table.take(pa.array([p.row for p in selection.picks], type=pa.int64()))
    chosen = chosen.append_column("selection_reason", pa.array([p.reason for p in selection.picks], pa.string()))
    report = {**selection.report, "source": str(dataset_dir)}
    out.mkdir(parents=True, exist_ok=True)
    meta_dir(out).mkdir(exist_ok=True)
    (meta_dir(out) / "stats.json").unlink(missing_ok=True)  # written last: the folder is complete when it exists
    for old in out.glob("data-*.parquet"):
        old.unlink()
    tmp = out / ".data-00000.tmp"
    pq.write_table(chosen, tmp)
    tmp.replace(out / "data-00000-of-00001.parquet")
    spec = meta_dir(dataset_dir) / "spec.yaml"
    if spec.is_file():
        shutil.copyfile(spec, meta_dir(out) / "spec.yaml")
    write_text_atomic(meta_dir(out) / REPORT, json.dumps(report, indent=2) + "\n")
    stats = json.loads((meta_dir(dataset_dir) / "stats.json").read_text(encoding="utf-8"))
    stats["selection"] = report
    write_text_atomic(meta_dir(out) / "stats.json", json.dumps(stats, indent=2) + "\n")
    return report


def select_command(
    dataset_dir: Path = typer.Argument(..., help="A dataset folder written by `distill run`."),
    budget: int = typer.Option(..., help="How many problems (one trace each) to select."),
    out: Path = typer.Option(..., help="The new dataset folder."),
    max_pass_rate: float = typer.Option(1.0, help="Leave out problems the teacher solved more often than this."),
    min_prm: Optional[float] = typer.Option(None, help="Leave out traces whose PRM score is below this."),
    cluster_threshold: float = typer.Option(0.5, help="MinHash Jaccard at which two problems share a cluster."),
) -> None:
    """A cold-start set: verified, one trace per problem, hard but solvable first, spread over clusters."""
    from pydantic import ValidationError

    try:
        try:
            config = SelectConfig(budget=budget, max_pass_rate=max_pass_rate, min_prm=min_prm,
                                  cluster_threshold=cluster_threshold)
        except ValidationError as exc:
            raise flag_error(exc) from None
        report = select_folder(dataset_dir, out, config)
    except SpecError as exc:
        fail(str(exc))
    typer.echo(f"wrote {out}: {report['selected']} of {report['candidates']} candidate problems "
               f"({report['problems']} in all) from {report['clusters']} clusters; {json.dumps(report['outcome'])}")


def register(app: typer.Typer) -> None:
    app.command("select")(select_command)
