"""``distill mix DIR1 DIR2 … --out OUT``: one SFT or KD export from several dataset folders.

OUT holds the Axolotl files and ``export.json`` (with ``mix``: the sources, their ratios, caps and row counts),
as ``distill export`` writes them, and ``OUT/dataset/``: the mixed traces as a dataset folder (a ``source``
column, problem ids prefixed with the source's name, ``__meta__/stats.json`` with the same ``mix``), which
``distill publish OUT/dataset`` takes; its card lists the per-source counts. Rows are ordered easy to hard across
all sources (``--order curriculum``, the export's difficulty: teacher pass rate and length percentile), shuffled
with the seed (``shuffle``), or left source by source (``source``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import typer
import yaml

from distill.axolotl.curriculum import difficulties
from distill.command import fail, flag_error
from distill.mix.plan import parse_assignments, plan_mix, sample_indices
from pipelines.spec import SpecError
from pipelines.store import StatsCollector, meta_dir, write_text_atomic

ORDERS = ("curriculum", "shuffle", "source")


def _spec(folder: Path) -> dict[str, Any]:
    path = meta_dir(folder) / "spec.yaml"
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except yaml.YAMLError:
        spec = None
    return spec if isinstance(spec, dict) else {}


def source_names(folders: list[Path]) -> list[str]:
    """Each source's name: its spec's name, else its folder's; they must differ."""
    if len(folders) < 2:
        raise SpecError("DATASET_DIRS: give at least two dataset folders to mix")
    names = [str(_spec(f).get("name") or f.name) for f in folders]
    if len(set(names)) < len(names):  # same spec twice (e.g. two runs of gsm8k): the folder names then
        names = [f.name for f in folders]
    if len(set(names)) < len(names):
        raise SpecError(f"DATASET_DIRS: two sources are named the same ({', '.join(names)}); rename a folder")
    return names


def _kept(folder: Path) -> pa.Table:
    shards = sorted(folder.glob("data-*.parquet"))
    if not shards:
        raise SpecError(f"DATASET_DIRS: no data-*.parquet shards in {folder}; run `distill run SPEC --out DIR` first")
    table = pa.concat_tables([pq.read_table(s) for s in shards], promote_options="default")
    return table.filter(pc.fill_null(table.column("kept"), False))


def _ordered(table: pa.Table, order: str, seed: int) -> pa.Table:
    if order == "source" or table.num_rows == 0:
        return table
    if order == "shuffle":
        indices = list(range(table.num_rows))
        random.Random(seed).shuffle(indices)
        return table.take(pa.array(indices, pa.int64()))
    columns = table.select(["pass_rate", "completion_tokens", "completion"]).to_pydict()
    lengths = [t if t is not None else len(c or "") for t, c in zip(columns["completion_tokens"],
                                                                    columns["completion"], strict=True)]
    score = difficulties(columns["pass_rate"], lengths)
    return table.take(pa.array(sorted(range(table.num_rows), key=lambda i: (score[i], i)), pa.int64()))


def _mixed_spec(folders: list[Path], names: list[str]) -> str:
    specs = [_spec(f) for f in folders]
    licenses = {s.get("license") for s in specs}
    teachers = {json.dumps(s.get("teacher"), sort_keys=True) for s in specs}
    mixed: dict[str, Any] = {
        "name": "mix-" + "-".join(names),
        "description": f"A mix of {len(names)} trace datasets: {', '.join(names)}.",
        "license": licenses.pop() if len(licenses) == 1 else None,
    }
    if len(teachers) == 1 and specs[0].get("teacher"):
        mixed["teacher"] = specs[0]["teacher"]
    mixed["mix"] = [{"name": n, "path": str(f), "spec": s} for n, f, s in zip(names, folders, specs, strict=True)]
    return yaml.safe_dump(mixed, sort_keys=False, allow_unicode=True)


def mix_folders(folders: list[Path], out: Path, options: Any, ratios: list[str], caps: list[str],
                total: int | None, seed: int, order: str, scorer: Any = None) -> dict[str, Any]:
    """Write the mixed dataset folder and its export; returns the export manifest (with ``mix``)."""
    from distill.axolotl.export import MANIFEST, export_dataset

    if order not in ORDERS:
        raise SpecError(f"--order: {order!r} is not one of {', '.join(ORDERS)}")
    names = source_names(folders)
    tables = {n: _kept(f) for n, f in zip(names, folders, strict=True)}
    shares = plan_mix({n: t.num_rows for n, t in tables.items()}, parse_assignments(ratios, "ratio", names, float),
                      {k: int(v) for k, v in parse_assignments(caps, "cap", names, int).items()}, total)
    parts = []
    for share in shares:
        table = tables[share.name].take(pa.array(sample_indices(share.available, share.rows, seed, share.name),
                                                 pa.int64()))
        ids = pa.array([f"{share.name}:{pid}" for pid in table.column("problem_id").to_pylist()], pa.string())
        table = table.set_column(table.schema.get_field_index("problem_id"), "problem_id", ids)
        parts.append(table.append_column("source", pa.array([share.name] * table.num_rows, pa.string())))
    mixed = _ordered(pa.concat_tables(parts, promote_options="default"), order, seed)
    if mixed.num_rows == 0:
        raise SpecError("DATASET_DIRS: the mix is empty (no kept traces, or every cap is 0)")
    mix = {"seed": seed, "order": order, "total": mixed.num_rows,
           "sources": [{"name": s.name, "path": str(f), "available": s.available, "ratio": s.ratio, "cap": s.cap,
                        "rows": s.rows} for s, f in zip(shares, folders, strict=True)]}
    dataset = out / "dataset"
    meta_dir(dataset).mkdir(parents=True, exist_ok=True)
    (meta_dir(dataset) / "stats.json").unlink(missing_ok=True)
    for old in dataset.glob("data-*.parquet"):
        old.unlink()
    pq.write_table(mixed, dataset / "data-00000-of-00001.parquet")
    write_text_atomic(meta_dir(dataset) / "spec.yaml", _mixed_spec(folders, names))
    collector = StatsCollector()
    collector.add(mixed)
    verification = sorted({str(_spec(f).get("verification") or "math") for f in folders})
    teachers = sorted({str(t) for t in mixed.column("teacher_model").to_pylist() if t})
    stats = collector.result({"verification": ", ".join(verification), "teacher_model": ", ".join(teachers),
                              "mix": mix})
    write_text_atomic(meta_dir(dataset) / "stats.json", json.dumps(stats, indent=2) + "\n")
    manifest = export_dataset(dataset, out, options, scorer)
    manifest["mix"] = mix
    write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def mix_command(
    dataset_dirs: list[Path] = typer.Argument(..., help="Two or more dataset folders written by `distill run`."),
    out: Path = typer.Option(..., help="Folder for the Axolotl files, export.json and dataset/ (the mixed traces)."),
    format: str = typer.Option("sft", "--format", help="sft | kd."),  # noqa: A002
    ratio: Optional[list[str]] = typer.Option(None, help="NAME=R per source (normalised), e.g. gsm8k=0.7."),
    cap: Optional[list[str]] = typer.Option(None, help="NAME=N: at most N traces from that source."),
    total: Optional[int] = typer.Option(None, help="With --ratio: the mix's size (default: the largest that fits)."),
    seed: int = typer.Option(0, help="Which traces each source gives (and the order with --order shuffle)."),
    order: str = typer.Option("curriculum", help="curriculum (easy to hard across sources) | shuffle | source."),
    curriculum: bool = typer.Option(False, help="Write stage1 (short traces of easy problems) and stage2."),
    student: Optional[str] = typer.Option(None, help="Student model (path or Hub id); required for kd."),
    file_format: str = typer.Option("parquet", help="parquet | jsonl."),
    max_seq_len: int = typer.Option(4096, help="Drop conversations longer than this (student tokens)."),
    teacher_url: Optional[str] = typer.Option(None, help="kd: score the student's tokens with this vLLM teacher."),
    teacher_model: Optional[str] = typer.Option(None, help="kd: the served teacher's name, or a local model."),
) -> None:
    """Combine dataset folders into one SFT or KD export with per-source ratios or caps."""
    from pydantic import ValidationError

    from distill.axolotl.curriculum import CurriculumConfig
    from distill.axolotl.export import ExportOptions

    try:
        if total is not None and total < 1:
            raise SpecError("--total: must be at least 1")
        try:
            options = ExportOptions(format=format, file_format=file_format, student=student,
                                    max_seq_len=max_seq_len, curriculum=CurriculumConfig() if curriculum else None)
        except ValidationError as exc:
            raise flag_error(exc) from None
        scorer = None
        if format == "kd" and (teacher_url or teacher_model):
            import os

            from distill.kd.score import build_scorer

            scorer = build_scorer(teacher_model, teacher_url, api_key=os.environ.get("OPENAI_API_KEY"))
        manifest = mix_folders(dataset_dirs, out, options, ratio or [], cap or [], total, seed, order, scorer)
    except SpecError as exc:
        fail(str(exc))
    counts = ", ".join(f"{s['name']} {s['rows']}/{s['available']}" for s in manifest["mix"]["sources"])
    files = ", ".join(f"{f['path']} ({f['rows']} rows)" for f in manifest["files"])
    typer.echo(f"wrote {out}: {files}; sources {counts}; dropped {json.dumps(manifest['dropped'])}; "
               f"publish with `distill publish {out / 'dataset'} --repo-id …`")


def register(app: typer.Typer) -> None:
    app.command("mix")(mix_command)
