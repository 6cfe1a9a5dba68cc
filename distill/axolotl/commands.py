"""``distill export`` and ``distill config``: the factory's dataset → Axolotl files → a runnable config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from distill.command import fail, flag_error
from pipelines.spec import SpecError


def export(
    dataset_dir: Path = typer.Argument(..., help="A dataset folder written by `distill run`, or any parquet/jsonl "
                                       "file or folder (or Hub id) with a problem and a thought or assistant "
                                       "messages."),
    format: str = typer.Option("sft", "--format", help="sft (messages) | kd (messages + aligned top-k logprobs)."),  # noqa: A002
    out: Path = typer.Option(..., help="Folder for the Axolotl files and export.json."),
    student: Optional[str] = typer.Option(None, help="Student model (path or Hub id); required for kd."),
    teacher_tokenizer: Optional[str] = typer.Option(None, help="kd: also compare this tokenizer's vocabulary."),
    file_format: str = typer.Option("parquet", help="parquet | jsonl."),
    max_seq_len: int = typer.Option(4096, help="Drop conversations longer than this (student tokens)."),
    teacher_url: Optional[str] = typer.Option(None, help="kd: score the student's tokens with this vLLM teacher "
                                                         "(base URL, e.g. http://127.0.0.1:8000/v1)."),
    teacher_model: Optional[str] = typer.Option(None, help="kd: the served teacher's name (with --teacher-url), or a "
                                                           "local model to score with in-process."),
    top_k: Optional[int] = typer.Option(None, help="kd: the k of the targets (default: the run's top_logprobs; "
                                                   "scored: else 20)."),
    curriculum: bool = typer.Option(False, help="Write stage1 (short traces of easy problems) and stage2."),
    stage1_min_pass_rate: float = typer.Option(0.75, help="Curriculum: stage-1 problems' minimum pass rate."),
    stage1_max_length_quantile: float = typer.Option(0.5, help="Curriculum: stage-1 traces' maximum length quantile."),
) -> None:
    """Write the kept traces in Axolotl's SFT or KD format (optionally as curriculum stages)."""
    from pydantic import ValidationError

    from distill.axolotl.curriculum import CurriculumConfig
    from distill.axolotl.export import ExportOptions, export_dataset

    try:
        try:
            options = ExportOptions(
                format=format, file_format=file_format, student=student, teacher_tokenizer=teacher_tokenizer,
                max_seq_len=max_seq_len, top_k=top_k,
                curriculum=CurriculumConfig(stage1_min_pass_rate=stage1_min_pass_rate,
                                            stage1_max_length_quantile=stage1_max_length_quantile)
                if curriculum else None)
        except ValidationError as exc:
            raise flag_error(exc) from None
        scorer = None
        if format == "kd" and (teacher_url or teacher_model):
            import os

            from distill.kd.score import build_scorer

            scorer = build_scorer(teacher_model, teacher_url, api_key=os.environ.get("OPENAI_API_KEY"))
        manifest = export_dataset(dataset_dir, out, options, scorer)
    except SpecError as exc:
        fail(str(exc))
    files = ", ".join(f"{f['path']} ({f['rows']} rows)" for f in manifest["files"])
    typer.echo(f"wrote {out}: {files}; dropped {json.dumps(manifest['dropped'])}"
               + (f"; kd {json.dumps(manifest['kd'])}" if "kd" in manifest else ""))


def config(
    method: str = typer.Argument(..., help="sft | kd | kd-online | prm."),
    dataset: Optional[Path] = typer.Option(None, help="A folder written by `distill export` (sft, kd, kd-online)."),
    data: Optional[Path] = typer.Option(None, help="prm: the labels.jsonl written by `distill prm-label`."),
    labels: str = typer.Option("hard", help="prm: hard (any continuation reaches the gold) | soft (most do)."),
    student: str = typer.Option(..., help="Student model (path or Hub id)."),
    out: Path = typer.Option(..., help="The config file to write (curriculum: <stem>-stage1.yaml, -stage2.yaml)."),
    template: Optional[str] = typer.Option(None, help="A template in axolotl_configs/ or a YAML path."),
    output_dir: Optional[Path] = typer.Option(None, help="Where Axolotl writes the model (out/train/<stem>)."),
    prepared_dir: Optional[Path] = typer.Option(None, help="Axolotl's tokenised-dataset cache (out/prepared/<stem>)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a top-level key: --set max_steps=100."),
    smoke: bool = typer.Option(False, help="A few float32 steps on CPU (plumbing check, tests)."),
    qat: bool = typer.Option(False, help="Quantization-aware training: int8 activations + int4 weights (torchao "
                                         "fake quantization); export with `distill export-model --quantize int4`."),
    loss: Optional[str] = typer.Option(None, help="kd: forward | reverse | jsd, over the teacher's top k plus a tail "
                                                  "bucket (the factory's KD plugin; default: the template's); "
                                                  "reverse_sampled: the sampled token's reverse-KL estimate, for "
                                                  "the student's own samples (distill onpolicy); "
                                                  "axolotl_legacy: Axolotl's own forward KL renormalised over the "
                                                  "top k (no gradient outside it), only to reproduce old "
                                                  "measurements."),
    beta: Optional[float] = typer.Option(None, help="kd --loss jsd: the teacher's weight in the mixture, in (0, 1) "
                                                    "(default 0.5)."),
) -> None:
    """Render a complete Axolotl config for an export (or, for prm, for PRM labels) from axolotl_configs/."""
    from distill.axolotl.configs import parse_overrides, write_configs, write_prm_config
    from distill.axolotl.export import read_manifest

    try:
        if method == "prm":
            if data is None:
                raise SpecError("--data: missing; give the labels.jsonl written by `distill prm-label IN --out DIR`")
            if qat:
                raise SpecError("--qat: not for prm; quantization-aware training is for students (sft, kd)")
            path, stats = write_prm_config(data, student, out, labels, template=template, output_dir=output_dir,
                                           prepared_dir=prepared_dir, overrides=parse_overrides(set_ or []),
                                           smoke=smoke)
            typer.echo(f"wrote {path}: make train CONFIG={path} ({stats['rows']} rows, {stats['labels']} labels: "
                       f"{stats['positive_steps']} of {stats['steps']} steps good)")
            return
        if dataset is None:
            raise SpecError(f"--dataset: missing; give the folder `distill export` wrote for {method}")
        manifest = read_manifest(dataset)
        paths = write_configs(method, dataset, manifest, student, out, template=template, output_dir=output_dir,
                              prepared_dir=prepared_dir, overrides=parse_overrides(set_ or []), smoke=smoke, qat=qat,
                              loss=loss, beta=beta)
    except SpecError as exc:
        fail(str(exc))
    for path in paths:
        typer.echo(f"wrote {path}: make train CONFIG={path}")


def train(
    ctx: typer.Context,
    config_path: Path = typer.Argument(..., metavar="CONFIG", help="An Axolotl config (`distill config` writes one)."),
    preprocess: bool = typer.Option(False, help="Tokenise only (`axolotl preprocess`)."),
) -> None:
    """Run `axolotl train CONFIG` (or preprocess) from .venv-train, telemetry off; arguments after `--` go to it."""
    from distill.axolotl.train import run_axolotl

    try:
        run_axolotl("preprocess" if preprocess else "train", config_path, extra=list(ctx.args), stream=True)
    except SpecError as exc:
        fail(str(exc))


def register(app: typer.Typer) -> None:
    app.command("export")(export)
    app.command("config")(config)
    app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(train)
