"""The ``distill`` command: one entry point for every job of the factory."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from pipelines.spec import SpecError, load_spec, shipped_specs

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Synthetic reasoning-trace factory.")


def fail(message: str) -> None:
    """One clear line on stderr and a non-zero exit."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def interrupted(exc: KeyboardInterrupt) -> None:
    """Ctrl-C or SIGTERM: what was written is kept; 128 + the signal's number, as shells report it."""
    from pipelines.errors import INTERRUPTED, Interrupted

    typer.echo(f"error: {INTERRUPTED}", err=True)
    raise typer.Exit(exc.exit_code if isinstance(exc, Interrupted) else 130)


FRESH_HELP = "Discard what earlier runs generated into this folder and start over."


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.raiseExceptions = verbose  # a log that cannot be written (full disk) must not print tracebacks
    if not verbose:
        from pipelines.run_log import hold_warnings

        hold_warnings()  # library warnings go to the run's log file (pipelines/run_log.py)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s")
    # torchao (distill export-model) warns on import that its CUDA-only kernels do not load on a CPU build
    # and registers enums with torch's pytree, which torch 2.13 calls deprecated
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.ERROR)


@app.command("list")
def list_specs() -> None:
    """Show the shipped dataset specs."""
    for path in shipped_specs():
        spec, _ = load_spec(str(path))
        typer.echo(f"{spec.name:<12} {spec.source.path:<40} verification={spec.verification:<6} "
                   f"teacher={spec.teacher.model}")


@app.command()
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
) -> None:
    """Generate, parse, verify and write a trace dataset for SPEC."""
    from pipelines.errors import error_line
    from pipelines.preflight import preflight
    from pipelines.run import run_spec, work_left

    api_key = judge_key = None
    try:
        dataset, text = load_spec(spec)
        overrides = {"base_url": teacher_url and (teacher_url[0] if len(teacher_url) == 1 else teacher_url),
                     "model": teacher_model, "backend": backend, "num_samples": num_samples,
                     "max_new_tokens": max_new_tokens}
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if overrides:
            from pydantic import ValidationError

            try:
                dataset.teacher = type(dataset.teacher).model_validate({**dataset.teacher.model_dump(), **overrides})
            except ValidationError as exc:
                first = exc.errors()[0]
                flag = {"base_url": "teacher-url", "model": "teacher-model"}.get(str(first["loc"][0]),
                                                                                 str(first["loc"][0]).replace("_", "-"))
                raise SpecError(f"--{flag}: {first['msg'].removeprefix('Value error, ')}") from None
        if engine is not None or ray_address is not None:
            dataset.run = _run_overrides(dataset.run, engine, ray_address)
        out_dir = out or Path(dataset.output.dir or f"out/{dataset.name}")
        api_key = os.environ.get(dataset.teacher.api_key_env)
        judge_key = os.environ.get(dataset.judge.api_key_env) if dataset.judge else None
        # Source, output folder and teacher are checked before anything is created or written.
        preflight(dataset, limit, api_key, spec_out_dirs=[] if out else [out_dir],
                  probe_teacher=fresh or work_left(dataset, limit, cache_dir or out_dir / ".cache"),
                  judge_api_key=judge_key)
        stats = run_spec(dataset, text, out_dir, cache_dir=cache_dir, limit=limit, api_key=api_key, fresh=fresh,
                         progress_every_s=progress_every, judge_api_key=judge_key)
    except KeyboardInterrupt as exc:
        interrupted(exc)
    except SpecError as exc:
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - one line for the user; the traceback with --verbose
        logging.getLogger("distill").debug("run failed", exc_info=True)
        fail(error_line(exc, secrets=[api_key, judge_key]))
    typer.echo(f"wrote {out_dir}: {stats['samples']} samples of {stats['problems']} problems, "
               f"kept {stats['kept']} ({stats['pass_rate']:.1%}); reasons {json.dumps(stats['reasons'])}")


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


@app.command()
def demo(
    hub: bool = typer.Option(False, "--hub", help="Instead: the shipped demo spec against Qwen2.5-0.5B-Instruct "
                                                  "in-process (needs the network once)."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default out/demo, or out/demo-hub with --hub)."),
    limit: Optional[int] = typer.Option(None, help="--hub: only the first N problems."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a lab setting, e.g. students.max_steps=50."),
    fresh: bool = typer.Option(False, "--fresh", help="--hub: " + FRESH_HELP),
) -> None:
    """The whole loop offline (lab/configs/demo.yaml): a tiny teacher that really reasons, served by vLLM, its
    traces filtered and exported, SFT and KD students trained with Axolotl, all evaluated on held-out problems."""
    if not hub:
        from lab.commands import run_lab

        run_lab("demo", out or Path("out/demo"), set_ or [])
        return
    from pipelines.run import run_spec

    out = out or Path("out/demo-hub")
    dataset, text = load_spec("demo")
    typer.echo(f"demo --hub: teacher {dataset.teacher.model} in-process on CPU (downloads it once; without a "
               "network run `make demo`, the offline lab loop)")
    try:
        stats = run_spec(dataset, text, out, limit=limit, fresh=fresh)
    except KeyboardInterrupt as exc:
        interrupted(exc)
    except SpecError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"teacher.model: cannot load {dataset.teacher.model!r} ({type(exc).__name__}); "
             "check the network or run `make demo` (offline)")
    typer.echo(f"wrote {out}: {stats['samples']} samples of {stats['problems']} problems, kept {stats['kept']} "
               f"({stats['pass_rate']:.1%}); reasons {json.dumps(stats['reasons'])}")
    typer.echo(f"inspect: python -c \"import pandas as pd; print(pd.read_parquet('{out}'))\"; "
               f"stats in {out}/__meta__/stats.json")


@app.command("tiny-model")
def tiny_model(out: Path = typer.Option(Path("out/tiny-model"), help="Where to write it.")) -> None:
    """Build a tiny random Qwen2 model + tokenizer locally (for offline demos and tests)."""
    from pipelines.tiny_model import build_tiny_model

    typer.echo(str(build_tiny_model(out)))


from prm.commands import register as register_prm_commands  # noqa: E402  (prm-score, prm-eval)

register_prm_commands(app)

from prm.label.commands import register as register_prm_label_command  # noqa: E402  (prm-label)

register_prm_label_command(app)

from pipelines.publish.commands import register as register_publish_command  # noqa: E402  (publish)

register_publish_command(app)

from pipelines.axolotl.commands import register as register_axolotl_commands  # noqa: E402  (export, config)

register_axolotl_commands(app)

from pipelines.serve.commands import register as register_serve_command  # noqa: E402  (serve)

register_serve_command(app)

from pipelines.eval.commands import register as register_eval_command  # noqa: E402  (eval)

register_eval_command(app)

from pipelines.onpolicy.commands import register as register_onpolicy_command  # noqa: E402  (onpolicy)

register_onpolicy_command(app)

from pipelines.select.commands import register as register_select_command  # noqa: E402  (select)

register_select_command(app)

from pipelines.mix.commands import register as register_mix_command  # noqa: E402  (mix)

register_mix_command(app)

from lab.commands import register as register_lab_commands  # noqa: E402  (lab teacher|student|problems|run)

register_lab_commands(app)

from pipelines.ondevice.commands import register as register_ondevice_command  # noqa: E402  (export-model)

register_ondevice_command(app)


def entrypoint() -> None:
    import signal

    from pipelines.errors import raise_interrupted

    signal.signal(signal.SIGTERM, raise_interrupted)  # stop like Ctrl-C (a command may install its own)
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    entrypoint()
