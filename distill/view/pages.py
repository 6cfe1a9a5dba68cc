"""What each page shows, as template values: the folder index, a dataset's table, one sample, a run's summary,
an eval's report. Pure reads of the folder; secrets are removed here, as ``distill publish`` removes them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from distill.publish.redact import local_name, redact_spec, redact_stats
from distill.view.charts import bar_chart, score_color
from distill.view.data import LIST_COLUMNS, PER_PAGE, SAMPLE_COLUMNS, Database, Filters, Source
from distill.view.folders import find_folders, is_live, parts_of
from pipelines.store import META
from prm.split import split_steps

CREDENTIALS = re.compile(r"(\w+://)[^/\s:@]+:[^/\s@]+@")  # user:password@ in a URL


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def spec_text(out_dir: Path) -> str:
    try:
        return (out_dir / META / "spec.yaml").read_text(encoding="utf-8")
    except OSError:
        return ""


def split_of(text: str) -> tuple[str, str | None]:
    """The PRM's split rule from the run's spec (``auto`` without one), so the steps are those it scored."""
    try:
        prm = (yaml.safe_load(text) or {}).get("prm") or {}
    except (yaml.YAMLError, AttributeError):
        prm = {}
    return (prm.get("split") or "auto", prm.get("split_pattern")) if isinstance(prm, dict) else ("auto", None)


def eval_scores_file(out_dir: Path) -> Path | None:
    """For ``EVAL/runs/<model>/<set>``: ``EVAL/scores/<model>/<set>.parquet`` (the eval's right/wrong)."""
    if out_dir.parent.parent.name != "runs":
        return None
    path = out_dir.parents[2] / "scores" / out_dir.parent.name / f"{out_dir.name}.parquet"
    return path if path.is_file() else None


# --- the index -----------------------------------------------------------------------------------------------

def index_page(root: Path) -> dict[str, Any]:
    rows = []
    for folder in find_folders(root):
        stats = read_json(folder.path / META / "stats.json") or {}
        rows.append({"rel": folder.rel, "kind": folder.kind, "live": folder.kind == "dataset" and is_live(folder.path),
                     "samples": stats.get("samples"), "kept": stats.get("kept"), "problems": stats.get("problems")})
    return {"root": root.name, "folders": rows}


# --- a dataset's table ---------------------------------------------------------------------------------------

def table_page(db: Database, source: Source, filters: Filters) -> dict[str, Any]:
    total = db.count(source, filters)
    pages = max(1, -(-total // PER_PAGE))
    rows = [{**dict.fromkeys(LIST_COLUMNS), **row} for row in db.page(source, filters)]
    return {"total": total, "rows": rows, "pages": pages, "filters": filters, "live": source.live,
            "files": len(source.files), "reasons": db.reasons(source), "columns": set(source.columns),
            "eval": source.scores is not None}


# --- one sample ----------------------------------------------------------------------------------------------

def steps_view(sample: dict[str, Any], split: tuple[str, str | None]) -> dict[str, Any]:
    """The thought cut as the PRM cut it, each step with its score and colour, the first error marked."""
    try:
        steps = split_steps(sample.get("thought"), *split)
    except (ValueError, re.error):
        steps = split_steps(sample.get("thought"))
    scores = list(sample.get("step_scores") or [])
    first_error = sample.get("prm_first_error")
    view = [{"n": i + 1, "text": text, "score": scores[i] if i < len(scores) else None,
             "color": score_color(scores[i] if i < len(scores) else None), "first_error": first_error == i}
            for i, text in enumerate(steps)]
    note = None
    if scores and len(scores) != len(steps):
        note = (f"the PRM scored {len(scores)} steps and this split gives {len(steps)}: the colours follow the "
                "steps in order")
    return {"steps": view, "scored": bool(scores), "note": note}


def sample_page(db: Database, source: Source, out_dir: Path, problem_id: str, index: int) -> dict[str, Any] | None:
    # A folder from elsewhere may lack columns: every field the page reads is there, None when absent.
    samples = [{**dict.fromkeys(SAMPLE_COLUMNS), **s} for s in db.problem_samples(source, problem_id)]
    sample = next((s for s in samples if s["sample_index"] == index), None)
    if sample is None:
        return None
    if sample.get("teacher_model"):
        sample["teacher_model"] = local_name(sample["teacher_model"])
    split = split_of(spec_text(out_dir))
    others = [{**s, "steps": steps_view(s, split)} for s in samples if s["sample_index"] != index]
    return {"sample": sample, "steps": steps_view(sample, split), "others": others, "split": split[0],
            "live": source.live, "eval": source.scores is not None}


# --- the run's summary ---------------------------------------------------------------------------------------

def summary_page(db: Database, source: Source | None, out_dir: Path) -> dict[str, Any]:
    stats = read_json(out_dir / META / "stats.json")
    counted = db.summary(source) if source is not None else {}
    charts = []
    if counted.get("reasons"):
        charts.append(bar_chart(list(counted["reasons"].items()), "samples per outcome (kept or rejection reason)",
                                "#59a14f"))
    if counted.get("pass_rate_hist"):
        charts.append(bar_chart(counted["pass_rate_hist"], "problems by pass rate (kept share of their samples)"))
    if counted.get("tokens_hist"):
        charts.append(bar_chart(counted["tokens_hist"], "samples by completion tokens", "#f28e2b"))
    stats = redact_stats(stats) if stats else None
    selection = read_json(out_dir / META / "selection.json") or (stats or {}).get("selection")
    spec = redact_spec(spec_text(out_dir))
    shown_stats = {k: v for k, v in (stats or {}).items()
                   if k not in ("reasons", "decontamination", "dedupe", "selection", "mix")}
    return {"stats": shown_stats, "counted": counted, "charts": charts, "spec": spec,
            "decontamination": (stats or {}).get("decontamination"), "dedupe": (stats or {}).get("dedupe"),
            "selection": selection, "mix": (stats or {}).get("mix"), "live": source.live if source else False,
            "parts": len(parts_of(out_dir / ".cache"))}


def as_yaml(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True, width=100)


# --- an eval folder ------------------------------------------------------------------------------------------

def eval_page(db: Database, root: Path, eval_dir: Path) -> dict[str, Any]:
    from markdown_it import MarkdownIt

    report = ""
    try:
        report = (eval_dir / "report.md").read_text(encoding="utf-8")
    except OSError:
        pass
    rel = eval_dir.relative_to(root).as_posix()
    markdown = MarkdownIt("commonmark", {"html": False}).enable("table")
    # As publishing does: a local path in the report (a set's source file) is reduced to its name.
    report = re.sub(r"`([^`\n]+)`", lambda m: f"`{local_name(m.group(1))}`", CREDENTIALS.sub(r"\1", report))
    html = markdown.render(report)
    # The plots are files of this folder: served by /plot, nothing else of the disk is.
    html = re.sub(r'src="(plots/[\w.+-]+\.(?:png|svg))"',
                  lambda m: f'src="/plot?at={rel}&amp;name={m.group(1)}"', html)
    results = read_json(eval_dir / "results.json") or {}
    runs = []
    for model_dir in sorted(p for p in (eval_dir / "runs").glob("*") if p.is_dir()):
        for run_dir in sorted(p for p in model_dir.glob("*") if p.is_dir()):
            scores = eval_scores_file(run_dir)
            right = wrong = None
            if scores is not None:
                right, wrong = db.cursor().execute(
                    "SELECT count(*) FILTER (WHERE correct), count(*) FILTER (WHERE NOT correct) FROM read_parquet(?)",
                    [str(scores)]).fetchone()
            runs.append({"model": model_dir.name, "set": run_dir.name, "rel": run_dir.relative_to(root).as_posix(),
                         "right": right, "wrong": wrong})
    return {"report": html, "runs": runs, "models": list(results.get("models") or []),
            "sets": list(results.get("sets") or [])}
