"""``distill onpolicy CONFIG``: rounds of student sampling, teacher grading and KD training (see rounds.py)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Optional

import typer

from pipelines.spec import SpecError


def onpolicy(
    config: Path = typer.Argument(..., help="An on-policy YAML, e.g. pipelines/onpolicy/configs/qwen2.5-1.5b.yaml."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a setting: --set rounds=3."),
) -> None:
    """On-policy distillation: each round the student samples, the teacher scores its tokens, KD trains it."""
    from pipelines.errors import error_line
    from pipelines.onpolicy.config import load_onpolicy_config
    from pipelines.onpolicy.rounds import Rounds
    from pipelines.spec import parse_sets

    try:
        cfg = load_onpolicy_config(config, parse_sets(set_ or []))
        main_pid = os.getpid()

        def interrupt(signum: int, frame: object) -> None:  # SIGTERM stops like Ctrl-C: servers stop, work stays
            if os.getpid() != main_pid:  # a pipeline worker forked after this was set
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
                return
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, interrupt)
        history = Rounds(cfg, echo=typer.echo).run()
    except SpecError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("error: interrupted; rerun the same command to resume", err=True)
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - one line; the traceback with --verbose
        import logging

        logging.getLogger("distill").debug("onpolicy failed", exc_info=True)
        typer.echo(f"error: {error_line(exc)}", err=True)
        raise typer.Exit(2) from None
    cells = ", ".join(f"round {h['round']} {h['pass@1']:.1%}" for h in history if h.get("pass@1") is not None)
    typer.echo(f"wrote {cfg.out}/rounds.json" + (f": pass@1 {cells}" if cells else ""))


def register(app: typer.Typer) -> None:
    app.command("onpolicy")(onpolicy)
