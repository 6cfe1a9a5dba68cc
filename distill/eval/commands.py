"""``distill eval``: flags (or ``--config eval.yaml``, which the flags override) → EvalConfig → evaluate()."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import typer

from distill.command import stop_on_sigterm, user_errors
from pipelines.spec import SpecError


def eval_command(
    sets: Optional[list[str]] = typer.Option(None, "--set", help="An eval set (repeatable): a shipped name "
                                             "(distill eval --list) or a set YAML."),
    models: Optional[list[str]] = typer.Option(None, "--model", help="NAME=TARGET[,key=value...] (repeatable); "
                                               "TARGET: http://host:port/v1, or a model folder / Hub id (served "
                                               "with vLLM; ,backend=transformers runs it in-process)."),
    config: Optional[Path] = typer.Option(None, help="An eval YAML (sets, models, samples, …); flags override it."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default out/eval)."),
    samples: Optional[int] = typer.Option(None, help="k samples per problem (default: each set's)."),
    temperature: Optional[float] = typer.Option(None, help="Sampling temperature (default 0.6)."),
    top_p: Optional[float] = typer.Option(None, help="Nucleus sampling (default 0.95)."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Token budget per sample (default: each set's)."),
    limit: Optional[int] = typer.Option(None, help="Only the first N problems of each set."),
    offline: Optional[bool] = typer.Option(None, "--offline", help="Use each set's shipped local copy (written "
                                           "for this project) instead of the Hub."),
    train: Optional[list[Path]] = typer.Option(None, help="Training dataset folder (repeatable): leakage, OOD."),
    teacher_traces: Optional[str] = typer.Option(None, help="Chain similarity reference: a dataset folder or a "
                                                 "model name of this eval."),
    logprobs: Optional[str] = typer.Option(None, help="auto (served models) | on | off: the log-prob confidence."),
    ngram: Optional[int] = typer.Option(None, help="Leakage n-gram size (default 8)."),
    list_sets: bool = typer.Option(False, "--list", help="Show the shipped eval sets and exit."),
) -> None:
    """Evaluate models on eval sets: pass@1 ± SE, pass@k, maj@k, format, calibration, chain similarity, OOD and
    leakage, in OUT/results.json, OUT/report.md and OUT/plots/."""
    from distill.eval.config import load_config, parse_model_flag, validate
    from distill.eval.sets import load_set, shipped_sets

    if list_sets:
        for name in shipped_sets():
            s = load_set(name)
            where = s.source.path if not s.source.is_local else f"local:{Path(s.source.path).name}"
            typer.echo(f"{s.name:<18} {where:<34} {s.verification:<10} k={s.samples:<3} {s.description}")
        return
    with user_errors() as secrets:
        data: dict[str, Any] = load_config(config) if config else {}
        flags = {"sets": sets or None, "out": out, "samples": samples, "temperature": temperature, "top_p": top_p,
                 "max_new_tokens": max_new_tokens, "limit": limit, "offline": offline, "train": train or None,
                 "teacher_traces": teacher_traces, "logprobs": logprobs, "ngram": ngram,
                 "models": [parse_model_flag(m) for m in models] if models else None}
        flags = {k: v for k, v in flags.items() if v is not None}
        if "sets" not in data and "sets" not in flags:
            raise SpecError("--set: give at least one eval set (distill eval --list shows them)")
        if "models" not in data and "models" not in flags:
            raise SpecError("--model: give at least one model (NAME=http://host:port/v1 or NAME=MODEL_DIR)")
        cfg = validate({**data, **flags}, set(flags), config)
        api_keys = {m.name: os.environ.get(m.api_key_env) for m in cfg.models}
        secrets += api_keys.values()
        stop_on_sigterm(main_only=True)  # servers the eval started stop on SIGTERM too
        from distill.eval.evaluate import evaluate
        from distill.eval.report import headline, pct

        results = evaluate(cfg, api_keys)
    for model, runs in results["runs"].items():
        cells = ", ".join(f"{name} {pct(headline(run).get('pass@1'), headline(run).get('pass@1_se'))}"
                          for name, run in runs.items())
        typer.echo(f"{model}: pass@1 {cells}")
    typer.echo(f"wrote {cfg.out}/report.md, results.json and plots/")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
