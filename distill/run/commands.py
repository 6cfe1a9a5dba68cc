"""``distill list`` and ``distill run``: the shipped specs, and a spec's trace dataset (pipelines/run/).

``distill run`` turns the spec and its flags into the effective spec and hands it to ``run_spec``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from distill.command import flag_error, user_errors
from pipelines.spec import SpecError, load_spec, shipped_specs

if TYPE_CHECKING:
    from distill.view.commands import Beside

FRESH_HELP = "Discard what earlier runs generated into this folder and start over."


def list_specs() -> None:
    """Show the shipped dataset specs."""
    for path in shipped_specs():
        spec, _ = load_spec(str(path))
        typer.echo(f"{spec.name:<12} {spec.source.path:<40} verification={spec.verification:<6} "
                   f"teacher={spec.teacher.model}")


def run(
    spec: str = typer.Argument(..., help="A shipped spec name (see `distill list`) or a YAML path."),
    teacher_url: Optional[list[str]] = typer.Option(None, help="Teacher base URL(s), e.g. http://127.0.0.1:8000/v1."),
    teacher_model: Optional[str] = typer.Option(None, help="Served model name of the teacher."),
    backend: Optional[str] = typer.Option(None, help="openai | vllm | transformers."),
    num_samples: Optional[int] = typer.Option(None, help="Samples per problem."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Token budget per sample."),
    limit: Optional[int] = typer.Option(None, help="Only the first N problems."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default out/<name>)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Resume folder (default <out>/.cache)."),
    fresh: bool = typer.Option(False, "--fresh", help=FRESH_HELP),
    progress_every: float = typer.Option(30.0, min=0.1, help="Without a terminal: seconds between progress lines."),
    engine: Optional[str] = typer.Option(None, help="local | ray (default: the spec's run.engine)."),
    ray_address: Optional[str] = typer.Option(None, help="Run on this Ray cluster (engine ray), e.g. auto or "
                                                         "head:6379; docs/scaling.md."),
    view: bool = typer.Option(False, "--view", help="Start `distill view` on the output folder beside the run "
                                                    "(127.0.0.1, a free port), print its URL; it stops with the run."),
) -> None:
    """Generate, parse, verify and write a trace dataset for SPEC."""
    from pydantic import ValidationError

    from pipelines.run.runner import run_spec

    with user_errors() as secrets:
        dataset, _ = load_spec(spec)
        overrides = {"base_url": teacher_url and (teacher_url[0] if len(teacher_url) == 1 else teacher_url),
                     "model": teacher_model, "backend": backend, "num_samples": num_samples,
                     "max_new_tokens": max_new_tokens}
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if overrides:
            try:
                dataset.teacher = type(dataset.teacher).model_validate({**dataset.teacher.model_dump(), **overrides})
            except ValidationError as exc:
                raise flag_error(exc, {"base_url": "teacher-url", "model": "teacher-model"}) from None
        if engine is not None or ray_address is not None:
            dataset.run = _run_overrides(dataset.run, engine, ray_address)
        out_dir = out or Path(dataset.output.dir or f"out/{dataset.name}")
        api_key = os.environ.get(dataset.teacher.api_key_env)
        judge_key = os.environ.get(dataset.judge.api_key_env) if dataset.judge else None
        secrets += [api_key, judge_key]
        # `dataset` is now the effective spec: run_spec checks it (source, output folder, teacher) before
        # anything is created or written, and records it in __meta__/spec.yaml.
        viewer = _start_viewer(out_dir, cache_dir) if view else None
        try:
            stats = run_spec(dataset, out_dir, cache_dir=cache_dir, limit=limit, api_key=api_key, fresh=fresh,
                             progress_every_s=progress_every, judge_api_key=judge_key, out_from_spec=out is None)
        finally:
            if viewer is not None:
                viewer.stop()
    typer.echo(f"wrote {out_dir}: {stats['samples']} samples of {stats['problems']} problems, "
               f"kept {stats['kept']} ({stats['pass_rate']:.1%}); reasons {json.dumps(stats['reasons'])}")


def _start_viewer(out_dir: Path, cache_dir: Path | None) -> Beside:
    """`distill view` on the run's folder, in its own process; its URL is printed before the run starts."""
    from distill.view.commands import Beside

    viewer = Beside(out_dir, cache_dir)
    try:
        viewer.wait_ready()
    except BaseException:
        viewer.stop()
        raise
    typer.echo(f"viewer: {viewer.url} (stops with the run; `distill view {out_dir}` opens it again)")
    return viewer


def _run_overrides(run_config: object, engine: str | None, ray_address: str | None) -> object:
    """The spec's run section with --engine / --ray-address applied (an address means the Ray engine)."""
    from pydantic import ValidationError

    values = run_config.model_dump(exclude_unset=True)  # type: ignore[attr-defined]
    if ray_address is not None:
        values.update(engine=engine or "ray", ray_address=ray_address)
    elif engine is not None:
        values["engine"] = engine
        if engine == "local":
            values.pop("ray_address", None)
    try:
        return type(run_config).model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = "--ray-address" if "ray_address" in map(str, first["loc"]) else "--engine"
        raise SpecError(f"{flag}: {'.'.join(map(str, first['loc'])) or 'run'}: "
                        f"{first['msg'].removeprefix('Value error, ')}") from None


def register(app: typer.Typer) -> None:
    app.command("list")(list_specs)
    app.command("run")(run)
