"""The whole eval: prepare the sets, check leakage and distribution, generate, score, write the report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from distill.eval.config import EvalConfig
from distill.eval.leakage import TrainFolder, distribution, leaked, read_train_folder
from distill.eval.models import check_path, probe
from distill.eval.run import Plan, generate, plan_runs, prepare_sets
from distill.eval.score import add_consistency, problem_key, score_sample, set_metrics
from distill.eval.sets import EvalSet, load_set
from pipelines.errors import redact_url
from pipelines.spec import SpecError

log = logging.getLogger("distill")
SCORED_COLUMNS = ["problem_id", "sample_index", "problem", "gold", "answer", "thought", "rejection_reason",
                  "finish_reason", "completion_tokens", "token_logprobs", "kept"]


def teacher_thoughts(folder: Path) -> dict[str, list[str]]:
    """Per problem (normalised text), the thoughts of a dataset folder: its kept traces, else every thought."""
    if not sorted(folder.glob("data-*.parquet")):
        raise SpecError(f"--teacher-traces: {folder} is not a dataset folder (no data-*.parquet)")
    rows = pd.read_parquet(folder, columns=["problem", "thought", "kept"])
    kept: dict[str, list[str]] = {}
    every: dict[str, list[str]] = {}
    for row in rows.itertuples():
        if isinstance(row.thought, str) and row.thought.strip():
            key = problem_key(row.problem)
            every.setdefault(key, []).append(row.thought)
            if row.kept is not None and row.kept is not pd.NA and bool(row.kept):
                kept.setdefault(key, []).append(row.thought)
    thoughts = {key: kept.get(key) or values for key, values in every.items()}
    return {key: values[:4] for key, values in thoughts.items()}  # 4 references bound the ROUGE-L cost


def _traces_for(cfg: EvalConfig, plan: Plan) -> dict[str, list[str]] | None:
    if cfg.teacher_traces is None:
        return None
    names = {m.name for m in cfg.models}
    if cfg.teacher_traces in names:
        if plan.model.name == cfg.teacher_traces:
            return None  # the reference itself
        return teacher_thoughts(cfg.out / "runs" / cfg.teacher_traces / plan.eval_set.name)
    return teacher_thoughts(Path(cfg.teacher_traces))


def score_run(cfg: EvalConfig, plan: Plan, leaks: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Scores of one run (also written to OUT/scores/<model>/<set>.parquet) and its metrics, all and clean."""
    import pyarrow.parquet as pq

    shards = sorted(plan.out_dir.glob("data-*.parquet"))
    present = set(pq.read_schema(shards[0]).names) if shards else set()
    columns = [c for c in SCORED_COLUMNS if c in present]  # not the top-k lists: they can be gigabytes
    rows = pd.read_parquet(plan.out_dir, columns=columns).to_dict("records")
    traces = _traces_for(cfg, plan)
    samples = [score_sample(row, plan.eval_set, traces.get(problem_key(row["problem"]), []) if traces else None)
               for row in rows]
    add_consistency(samples)
    for sample in samples:
        sample["leaked"] = sample["problem_id"] in leaks
    path = cfg.out / "scores" / plan.model.name / f"{plan.eval_set.name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(samples).to_parquet(path, index=False)
    clean = [s for s in samples if not s["leaked"]]
    return samples, {"all": set_metrics(samples, plan.eval_set, cfg.bins),
                     "clean": set_metrics(clean, plan.eval_set, cfg.bins) if leaks else None}


def evaluate(cfg: EvalConfig, api_keys: dict[str, str | None] | None = None) -> dict[str, Any]:
    """Run the eval described by ``cfg``; returns results.json's content (also written, with report.md)."""
    from distill.eval.report import write_report

    sets: list[EvalSet] = [load_set(name) for name in cfg.sets]
    if cfg.teacher_traces and cfg.teacher_traces not in {m.name for m in cfg.models} \
            and not Path(cfg.teacher_traces).is_dir():
        raise SpecError(f"--teacher-traces: {cfg.teacher_traces!r} is neither a dataset folder nor a model of "
                        "this eval")
    folders: list[TrainFolder] = [read_train_folder(p) for p in cfg.train]
    for model in cfg.models:  # before anything is written: every server answers, every folder exists
        if model.url is not None:
            probe(model, model.url, (api_keys or {}).get(model.name))
        else:
            check_path(model)
    prepared = prepare_sets(cfg, sets)
    plans = plan_runs(cfg, sets, prepared)
    generate(plans, cfg.out, api_keys or {})
    set_info = {}
    for eval_set in sets:
        _, sha, problems = prepared[eval_set.name]
        leaks = leaked(problems, folders, cfg.ngram)
        set_info[eval_set.name] = {"family": eval_set.family, "problems": len(problems), "problems_sha256": sha,
                                   "verification": eval_set.verification,
                                   "source": (eval_set.local if cfg.offline and eval_set.local
                                              else eval_set.source).path,
                                   "distribution": distribution(eval_set, problems, folders),
                                   "leakage": {"ngram": cfg.ngram, "count": len(leaks), "problems": leaks}}
    results: dict[str, Any] = {"sets": set_info, "models": {}, "runs": {}}
    samples_by_run = {}
    for plan in plans:
        leaks = set_info[plan.eval_set.name]["leakage"]["problems"]
        samples, scored = score_run(cfg, plan, leaks)
        samples_by_run[(plan.model.name, plan.eval_set.name)] = samples
        results["runs"].setdefault(plan.model.name, {})[plan.eval_set.name] = {
            **scored, "protocol": {k: plan.key[k] for k in ("samples", "temperature", "top_p", "max_new_tokens",
                                                           "logprobs")},
            "folder": str(plan.out_dir)}
    for model in cfg.models:
        results["models"][model.name] = {"url": model.url and redact_url(model.url), "path": model.path,
                                         "backend": "url" if model.url else model.backend,
                                         "served_model": model.served_model}
    results["teacher_traces"] = cfg.teacher_traces
    results["train"] = [str(p) for p in cfg.train]
    write_report(cfg, results, samples_by_run)
    return results
