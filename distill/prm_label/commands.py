"""``distill prm-label``: the typer command, a thin wrapper over distill/prm_label/rounds.py."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import typer

from distill.command import flag_error, user_errors
from pipelines.spec import DatasetSpec, SpecError

DEFAULT_RUBRIC = "Name the earliest wrong step of the solution."


def label_spec(in_path: Path, spec: str | None, teacher: dict[str, Any], judge: dict[str, Any]) -> DatasetSpec:
    """The spec that made the traces (``--spec``, else ``IN/__meta__/spec.yaml``) with the flags' overrides."""
    from pydantic import ValidationError

    from pipelines.spec import JudgeConfig, TeacherConfig, load_spec
    from pipelines.store import meta_dir

    path = spec or (str(meta_dir(in_path) / "spec.yaml") if (meta_dir(in_path) / "spec.yaml").is_file() else None)
    if path is None:
        raise SpecError(f"--spec: {in_path} has no __meta__/spec.yaml; give --spec with the teacher, prompt and "
                        "verification to label with")
    dataset, _ = load_spec(path)
    overrides = {k: v for k, v in teacher.items() if v is not None}
    judged = {k: v for k, v in judge.items() if v is not None}
    names = {"teacher": {"base_url": "teacher-url", "model": "teacher-model"},
             "judge": {"base_url": "judge-url", "model": "judge-model"}}
    for section, values in (("teacher", overrides), ("judge", judged)):
        if not values:
            continue
        current = getattr(dataset, section)
        base = current.model_dump() if current is not None else {"rubric": DEFAULT_RUBRIC}
        try:
            setattr(dataset, section, (TeacherConfig if section == "teacher" else JudgeConfig).model_validate(
                {**base, **values}))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = str(first["loc"][0])
            flag = names[section].get(where, f"{section}.{where}")
            raise SpecError(f"--{flag}: {first['msg'].removeprefix('Value error, ')}") from None
    return dataset


def register(app: typer.Typer) -> None:
    """Add ``prm-label`` to ``app``."""

    @app.command("prm-label")
    def prm_label(
        in_path: Path = typer.Argument(..., metavar="IN", help="A dataset folder written by `distill run` (kept "
                                       "and rejected traces), or any parquet/jsonl with problem, gold and thought."),
        out: Path = typer.Option(..., help="Where to write labels.jsonl, stats.json and the rollouts."),
        spec: Optional[str] = typer.Option(None, help="The teacher, prompt and verification (default: "
                                           "IN/__meta__/spec.yaml)."),
        teacher_url: Optional[list[str]] = typer.Option(None, help="Teacher base URL(s) (default: the spec's)."),
        teacher_model: Optional[str] = typer.Option(None, help="Served model name of the teacher."),
        completions: int = typer.Option(8, help="Completions from each step prefix (N)."),
        until: str = typer.Option("first-error", help="first-error: stop a trace at its first failing step; "
                                  "all: every step."),
        max_steps: int = typer.Option(16, help="Label at most this many steps of a trace."),
        split: str = typer.Option("auto", help="auto | blank_lines | step_markers | lines | regex (as prm-score)."),
        split_pattern: Optional[str] = typer.Option(None, help="split=regex: a step ends after each match."),
        temperature: Optional[float] = typer.Option(None, help="Sampling temperature (default: the spec's)."),
        max_new_tokens: Optional[int] = typer.Option(None, help="Token budget per completion (default: the spec's)."),
        limit: Optional[int] = typer.Option(None, help="Only the first N traces."),
        consensus: bool = typer.Option(False, "--consensus", help="Keep only the traces whose first wrong step "
                                       "the judge (the spec's judge:, or --judge-url) names too."),
        judge_url: Optional[str] = typer.Option(None, help="--consensus: the judge's base URL."),
        judge_model: Optional[str] = typer.Option(None, help="--consensus: the judge's served model name."),
        fresh: bool = typer.Option(False, "--fresh", help="Discard what an earlier labelling wrote into --out."),
        progress_every: float = typer.Option(30.0, min=0.1, help="Without a terminal: seconds between progress "
                                             "lines."),
    ) -> None:
        """Math-Shepherd step labels: from each step prefix the teacher finishes N runs; a step is good when any
        reaches the gold (soft label: the fraction)."""
        from pydantic import ValidationError

        from distill.prm_label.config import LabelConfig
        from distill.prm_label.rounds import LABELS, label_dataset

        with user_errors() as secrets:
            try:
                cfg = LabelConfig(completions=completions, until=until, max_steps=max_steps, split=split,
                                  split_pattern=split_pattern, temperature=temperature,
                                  max_new_tokens=max_new_tokens, limit=limit, consensus=consensus)
            except ValidationError as exc:
                raise flag_error(exc) from None
            dataset = label_spec(in_path, spec, {"base_url": teacher_url and (
                teacher_url[0] if len(teacher_url) == 1 else teacher_url), "model": teacher_model},
                {"base_url": judge_url, "model": judge_model})
            if dataset.teacher.backend != "openai":
                raise SpecError("teacher.backend: prm-label continues the teacher's reply through an "
                                "OpenAI-compatible server (vLLM); serve it with `distill serve` and give --teacher-url")
            api_key = os.environ.get(dataset.teacher.api_key_env)
            judge_key = os.environ.get(dataset.judge.api_key_env) if dataset.judge else None
            secrets += [api_key, judge_key]
            # Each round's run checks the teacher (run_spec's preflight); the consensus judge is asked after the
            # rounds, outside them, so it is checked here, before any rollout is paid for.
            if consensus and dataset.judge is not None and (fresh or not (out / LABELS).exists()):
                from pipelines.run.preflight import check_judge

                check_judge(dataset.judge, judge_key)
            stats = label_dataset(in_path, out, dataset, cfg, api_key=api_key, judge_api_key=judge_key,
                                  fresh=fresh, progress_every_s=progress_every)
        agreed = f", {stats['consensus']['agreed']} agreed with the judge" if "consensus" in stats else ""
        typer.echo(f"wrote {out / LABELS}: {stats['rows']} traces, {stats['steps_labelled']} steps labelled "
                   f"({stats['steps_positive']} positive, {stats['rollouts']} completions){agreed}; "
                   f"first errors {json.dumps(stats['first_error'])}")
