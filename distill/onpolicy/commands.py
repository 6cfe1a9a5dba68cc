"""``distill onpolicy CONFIG``: rounds of student sampling, teacher grading and KD training (see rounds.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from distill.command import stop_on_sigterm, user_errors


def onpolicy(
    config: Path = typer.Argument(..., help="An on-policy YAML, e.g. distill/onpolicy/configs/qwen2.5-1.5b.yaml."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a setting: --set rounds=3."),
) -> None:
    """On-policy distillation: each round the student samples, the teacher scores its tokens, KD trains it."""
    from distill.onpolicy.config import load_onpolicy_config
    from distill.onpolicy.rounds import Rounds
    from pipelines.spec import parse_sets

    with user_errors():
        cfg = load_onpolicy_config(config, parse_sets(set_ or []))
        stop_on_sigterm(main_only=True)  # servers stop, work stays; the pipeline's forked workers just end
        history = Rounds(cfg, echo=typer.echo).run()
    cells = ", ".join(f"round {h['round']} {h['pass@1']:.1%}" for h in history if h.get("pass@1") is not None)
    typer.echo(f"wrote {cfg.out}/rounds.json" + (f": pass@1 {cells}" if cells else ""))


def register(app: typer.Typer) -> None:
    app.command("onpolicy")(onpolicy)
