"""``distill prm-score`` and ``distill prm-eval``: the PRM's typer commands, registered on the main app."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from distill.command import fail, flag_error
from pipelines.spec import PrmConfig, SpecError

SPEC_HELP = "Take the defaults from this spec's prm: section (flags override it)."
STEP_TAG_HELP = ("The text after each step (default: ' ки', '<extra_0>', or for stepwise a newline, Axolotl's "
                 "step_separator).")


def prm_config(spec: str | None, **flags: Any) -> PrmConfig:
    """The spec's ``prm:`` section (if any) overridden by the flags given; errors name the flag."""
    from pydantic import ValidationError

    from pipelines.spec import load_spec

    base: dict[str, Any] = {}
    if spec:
        dataset, _ = load_spec(spec)
        if dataset.prm is None:
            raise SpecError(f"--spec: {spec} has no prm: section; add one or give --model and --style")
        base = dataset.prm.model_dump(exclude_unset=True)
    values = {**base, **{k: v for k, v in flags.items() if v is not None}}
    if "model" not in values:
        raise SpecError("--model: missing; give a PRM path or Hub id (or --spec with a prm: section)")
    try:
        return PrmConfig.model_validate(values)
    except ValidationError as exc:
        raise flag_error(exc) from None


def _scorer(cfg: PrmConfig) -> Any:
    from prm.scorer import PrmScorer

    try:
        return PrmScorer(cfg)
    except OSError as exc:
        raise SpecError(f"--model: cannot load {cfg.model!r} ({type(exc).__name__})") from None


def register(app: typer.Typer) -> None:
    """Add the PRM commands to ``app``."""

    @app.command("prm-score")
    def prm_score(
        in_dir: Path = typer.Option(..., "--in", help="A dataset folder written by `distill run`, or any "
                                    "parquet/jsonl file or folder (or Hub id) with a problem and a thought or "
                                    "assistant messages."),
        out_dir: Path = typer.Option(..., "--out", help="Where to write the scored dataset (may be --in)."),
        model: Optional[str] = typer.Option(None, help="PRM path or Hub id."),
        style: Optional[str] = typer.Option(None, help="math-shepherd | qwen-prm | stepwise (trained by "
                                             "`distill config prm`)."),
        spec: Optional[str] = typer.Option(None, help=SPEC_HELP),
        backend: Optional[str] = typer.Option(None, help="transformers | vllm."),
        base_url: Optional[str] = typer.Option(None, help="vllm: the PRM server, e.g. http://127.0.0.1:8001."),
        served_model: Optional[str] = typer.Option(None, help="vllm: the served model name."),
        tokenizer: Optional[str] = typer.Option(None, help="Tokenizer path or id (default: the model)."),
        step_tag: Optional[str] = typer.Option(None, help=STEP_TAG_HELP),
        threshold: Optional[float] = typer.Option(None, help="Reject traces whose score is below this."),
        aggregation: Optional[str] = typer.Option(None, help="min | mean | last | product."),
        split: Optional[str] = typer.Option(None, help="auto | blank_lines | step_markers | lines | regex."),
        split_pattern: Optional[str] = typer.Option(None, help="split=regex: a step ends after each match."),
        batch_size: Optional[int] = typer.Option(None, help="Traces per forward pass / request."),
        max_tokens: Optional[int] = typer.Option(None, help="Longer traces are left unscored."),
        device: Optional[str] = typer.Option(None, help="auto | cpu | cuda[:N]."),
        dtype: Optional[str] = typer.Option(None, help="auto | bfloat16 | float16 | float32."),
        trust_remote_code: Optional[bool] = typer.Option(None, "--trust-remote-code", help="Qwen2.5-Math-PRM."),
        score_rejected: Optional[bool] = typer.Option(None, "--all", help="Also score already rejected samples."),
    ) -> None:
        """Score every kept trace of a dataset folder step by step and re-filter it (reason `prm`)."""
        from distill.prm.dataset import score_dataset
        from prm.backend_vllm import PrmServerError

        try:
            cfg = prm_config(spec, model=model, style=style, backend=backend, base_url=base_url,
                             served_model=served_model, tokenizer=tokenizer, step_tag=step_tag, threshold=threshold,
                             aggregation=aggregation, split=split, split_pattern=split_pattern, batch_size=batch_size,
                             max_tokens=max_tokens, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                             score_rejected=score_rejected)
            from distill.prm.dataset import foreign_records

            foreign = foreign_records(in_dir)  # checked before the model loads
            stats = score_dataset(_scorer(cfg), in_dir, out_dir, foreign=foreign)
        except (SpecError, PrmServerError) as exc:
            fail(str(exc))
        prm = stats["prm"]
        typer.echo(f"wrote {out_dir}: {prm['scored']} traces scored ({prm['traces_per_s']} traces/s, "
                   f"{prm['tokens_per_s']} tokens/s), kept {stats['kept']} of {stats['samples']}; "
                   f"reasons {json.dumps(stats['reasons'])}")

    @app.command("prm-eval")
    def prm_eval(
        model: Optional[str] = typer.Option(None, help="PRM path or Hub id."),
        style: Optional[str] = typer.Option(None, help="math-shepherd | qwen-prm | stepwise (trained by "
                                             "`distill config prm`)."),
        data: Optional[Path] = typer.Option(None, help="Labelled jsonl (default: prm/data/processbench_mini.jsonl)."),
        spec: Optional[str] = typer.Option(None, help=SPEC_HELP),
        backend: Optional[str] = typer.Option(None, help="transformers | vllm."),
        base_url: Optional[str] = typer.Option(None, help="vllm: the PRM server."),
        tokenizer: Optional[str] = typer.Option(None, help="Tokenizer path or id (default: the model)."),
        step_tag: Optional[str] = typer.Option(None, help=STEP_TAG_HELP),
        threshold: Optional[float] = typer.Option(None, help="A step below this is a predicted error."),
        batch_size: Optional[int] = typer.Option(None, help="Traces per forward pass / request."),
        max_tokens: Optional[int] = typer.Option(None, help="The PRM's context budget per trace."),
        device: Optional[str] = typer.Option(None, help="auto | cpu | cuda[:N]."),
        dtype: Optional[str] = typer.Option(None, help="auto | bfloat16 | float16 | float32."),
        trust_remote_code: Optional[bool] = typer.Option(None, "--trust-remote-code", help="Qwen2.5-Math-PRM."),
        out: Optional[Path] = typer.Option(None, help="Also write the report as JSON here."),
    ) -> None:
        """ProcessBench-style F1 of a PRM on traces labelled with their first wrong step."""
        from prm.backend_vllm import PrmServerError
        from prm.evaluate import MINI_SET, evaluate, load_labelled

        try:
            cfg = prm_config(spec, model=model, style=style, backend=backend, base_url=base_url, tokenizer=tokenizer,
                             step_tag=step_tag, threshold=threshold, batch_size=batch_size, max_tokens=max_tokens,
                             device=device, dtype=dtype, trust_remote_code=trust_remote_code)
            traces = load_labelled(data or MINI_SET)
            report = evaluate(_scorer(cfg), traces, cfg.threshold)
        except (SpecError, PrmServerError) as exc:
            fail(str(exc))
        report = {"model": cfg.model, "style": cfg.style, "data": str(data or MINI_SET), "traces": len(traces),
                  **report}
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2) + "\n")
        typer.echo(json.dumps(report, indent=2))
        typer.echo(f"ProcessBench F1 {report['f1']:.3f} (erroneous {report['acc_erroneous']:.3f}, "
                   f"correct {report['acc_correct']:.3f}) at threshold {report['threshold']}; "
                   f"best F1 {report['best_f1']:.3f} at {report['best_threshold']} (chosen on this set)")
