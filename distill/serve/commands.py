"""``distill serve``: start vLLM for a model, print the base URL(s), stop cleanly on Ctrl-C or SIGTERM."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from distill.command import fail, flag_error
from pipelines.spec import SpecError


def serve(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="A local model folder or a Hub id."),
    name: Optional[str] = typer.Option(None, help="Served model name (default: MODEL); give it to --teacher-model."),
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(8000, help="Port of the first replica; replica i listens on PORT+i."),
    replicas: int = typer.Option(1, help="Servers to start (one per GPU: replica i sees CUDA device i)."),
    task: str = typer.Option("generate", help="generate (chat/completions) | reward (PRM, /pooling)."),
    reasoning_parser: Optional[str] = typer.Option(None, help="e.g. deepseek_r1: the thought goes to `reasoning`."),
    max_num_seqs: Optional[int] = typer.Option(None, help="Sequences in flight per server (teacher.max_concurrency)."),
    max_model_len: Optional[int] = typer.Option(None, help="Context length (must fit the model's positions)."),
    dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16."),
    seed: Optional[int] = typer.Option(None, help="vLLM's sampling seed."),
    log_dir: Path = typer.Option(Path("out/serve"), help="Where each server's log goes."),
    ready_timeout: float = typer.Option(900.0, help="Seconds to wait for a server to answer."),
) -> None:
    """Serve MODEL with vLLM (arguments after `--` go to vLLM as they are); Ctrl-C or SIGTERM stops it."""
    from pydantic import ValidationError

    from distill.serve.server import ServeConfig, start_servers

    try:
        try:
            cfg = ServeConfig(model=model, name=name, host=host, port=port, replicas=replicas, task=task,
                              reasoning_parser=reasoning_parser, max_num_seqs=max_num_seqs,
                              max_model_len=max_model_len, dtype=dtype, seed=seed, extra_args=list(ctx.args),
                              log_dir=log_dir, ready_timeout_s=ready_timeout)
        except ValidationError as exc:
            raise flag_error(exc) from None
        # SIGTERM raises KeyboardInterrupt here (distill.command.stop_on_sigterm, set by the entry point)
        typer.echo(f"starting vLLM for {cfg.model} ({cfg.replicas} replica(s), logs in {cfg.log_dir}) ...")
        servers = []
        try:
            servers = start_servers(cfg)
            urls = " ".join(f"--teacher-url {s.base_url}" for s in servers)
            what = f"--teacher-model {cfg.served_name}" if cfg.task == "generate" else "(PRM: prm.base_url)"
            for s in servers:
                typer.echo(f"serving {cfg.served_name} at {s.base_url} (pid {s.process.pid}, log {s.log_path})")
            typer.echo(f"ready: distill run SPEC {urls} {what}", )
            while all(s.alive() for s in servers):
                time.sleep(1.0)
            dead = next(s for s in servers if not s.alive())
            from distill.serve.server import last_error_line

            raise SpecError(f"vLLM on port {dead.port} exited: {last_error_line(dead.log_path)} "
                            f"(log: {dead.log_path})")
        except KeyboardInterrupt:
            typer.echo("stopping vLLM ...")
        finally:
            for s in servers:
                s.stop()
        typer.echo("stopped")
    except SpecError as exc:
        fail(str(exc))


def register(app: typer.Typer) -> None:
    app.command("serve", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(serve)
