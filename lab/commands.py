"""``distill lab …``: the lab's own commands (a teacher, a student, problem files, the whole loop)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from distill.command import fail, interrupted
from pipelines.spec import SpecError, load_spec

app = typer.Typer(no_args_is_help=True, help="The distillation lab: tiny teachers that really reason, on CPU.")




def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise SpecError(f"--levels: {text!r} is not a comma-separated list of positive integers, e.g. 2,3")
    return levels


def _shape(pairs: list[str]) -> dict[str, int]:
    shape = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if not value.isdigit():
            raise SpecError(f"--shape: {pair!r} is not KEY=INTEGER, e.g. hidden_size=64")
        shape[key] = int(value)
    return shape


@app.command()
def teacher(
    out: Path = typer.Option(..., help="Folder for the model (reused when its lab.json recipe matches)."),
    task: str = typer.Option("addition", help="addition | dictation."),
    levels: str = typer.Option("2", help="Difficulty levels, comma-separated (addition: digits)."),
    steps: int = typer.Option(400, help="Training steps (batch 64)."),
    corrupt: float = typer.Option(0.0, help="Share of training examples with one wrong step (imperfect teacher)."),
    tag: str = typer.Option("thought", help="thought | think (an R1-style teacher)."),
    seed: int = typer.Option(0, help="Seed of the data and the init."),
    shape: Optional[list[str]] = typer.Option(None, help="Override the model shape: --shape hidden_size=256."),
) -> None:
    """Train a tiny teacher from scratch on CPU: a Hugging Face folder that vLLM's CPU build serves."""
    from lab.teacher import train_teacher

    try:
        path = train_teacher(out, steps=steps, seed=seed, tag=tag, task=task, levels=_levels(levels),
                             corrupt=corrupt, shape=_shape(shape or []))
    except (SpecError, ValueError) as exc:
        fail(str(exc))
    meta = json.loads((path / "lab.json").read_text())
    typer.echo(f"teacher: {meta.get('parameters', '?')} parameters, final loss {meta['final_loss']:.4f}")
    typer.echo(str(path))


@app.command()
def student(
    teacher_dir: Path = typer.Option(..., "--teacher", help="The teacher folder (its tokenizer is shared)."),
    out: Path = typer.Option(..., help="Folder for the random-init student."),
    seed: int = typer.Option(0, help="Init seed: the same seed gives the same weights."),
    shape: Optional[list[str]] = typer.Option(None, help="Override the student shape: --shape hidden_size=128."),
) -> None:
    """A randomly initialised student of a smaller shape with the teacher's tokenizer (the untrained baseline)."""
    from lab.teacher import build_student

    try:
        path = build_student(teacher_dir, out, seed=seed, shape=_shape(shape or []))
    except (SpecError, ValueError, OSError) as exc:
        fail(str(exc))
    meta = json.loads((path / "lab.json").read_text())
    typer.echo(f"student: {meta['parameters']} parameters")
    typer.echo(str(path))


@app.command("problems")
def problems_file(
    out: Path = typer.Option(..., help="A .jsonl file of {question, answer} rows."),
    task: str = typer.Option("addition", help="addition | dictation."),
    n: int = typer.Option(100, help="How many."),
    level: Optional[int] = typer.Option(None, help="Difficulty level (addition: digits)."),
    seed: int = typer.Option(0, help="Seed of the stream."),
    held_out: bool = typer.Option(False, help="The held-out split (never in the train split)."),
) -> None:
    """Write seeded lab problems as a source file for `distill run` or an eval set."""
    from lab.tasks import problems

    try:
        rows = problems(n, seed, held_out=held_out, task=task, level=level)
    except ValueError as exc:
        fail(str(exc))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    typer.echo(f"wrote {out}: {len(rows)} {'held-out' if held_out else 'train'} {task} problems")


@app.command("run")
def run_loop(
    config: str = typer.Argument("demo", help="A config in lab/configs/ (by name) or a YAML path."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default out/lab/<name>)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a setting: --set students.max_steps=50."),
) -> None:
    """The whole loop: teacher → vLLM → distill run → export → SFT and KD students → distill eval."""
    run_lab(config, out, set_ or [])


def run_lab(config: str, out: Path | None, sets: list[str]) -> None:
    from lab.config import load_lab_config
    from lab.loop import Loop
    from pipelines.spec import parse_sets

    try:
        cfg = load_lab_config(config, parse_sets(sets))
        Loop(cfg, out or Path("out/lab") / cfg.name, echo=lambda line: typer.echo(line)).run()
    except SpecError as exc:
        fail(str(exc))


def demo(
    hub: bool = typer.Option(False, "--hub", help="Instead: the shipped demo spec against Qwen2.5-0.5B-Instruct "
                                                  "in-process (needs the network once)."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default out/demo, or out/demo-hub with --hub)."),
    limit: Optional[int] = typer.Option(None, help="--hub: only the first N problems."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a lab setting, e.g. students.max_steps=50."),
    fresh: bool = typer.Option(False, "--fresh", help="--hub: discard what earlier runs generated into this "
                                                      "folder and start over."),
) -> None:
    """The whole loop offline (lab/configs/demo.yaml): a tiny teacher that really reasons, served by vLLM, its
    traces filtered and exported, SFT and KD students trained with Axolotl, all evaluated on held-out problems."""
    if not hub:
        run_lab("demo", out or Path("out/demo"), set_ or [])
        return
    from pipelines.run.runner import run_spec

    out = out or Path("out/demo-hub")
    dataset, _ = load_spec("demo")
    typer.echo(f"demo --hub: teacher {dataset.teacher.model} in-process on CPU (downloads it once; without a "
               "network run `make demo`, the offline lab loop)")
    try:
        stats = run_spec(dataset, out, limit=limit, fresh=fresh)
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


def tiny_model(out: Path = typer.Option(Path("out/tiny-model"), help="Where to write it.")) -> None:
    """Build a tiny random Qwen2 model + tokenizer locally (for offline demos and tests)."""
    from testing.tiny_model import build_tiny_model

    typer.echo(str(build_tiny_model(out)))


def register(root: typer.Typer) -> None:
    """The lab's commands on ``distill`` (the ``distill.commands`` entry point in pyproject.toml): ``demo``,
    ``tiny-model`` and ``lab …``. The product does not import the lab; the lab plugs into it."""
    root.command("demo")(demo)
    root.command("tiny-model")(tiny_model)
    root.add_typer(app, name="lab")
