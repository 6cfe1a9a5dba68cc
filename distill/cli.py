"""The ``distill`` command: one entry point for every job of the factory.

Each job folder under ``distill/`` has a ``commands.py`` with ``register(app)``; ``JOBS`` lists them. Tools above
the product (the lab: ``distill demo``, ``distill lab …``) plug in through the ``distill.commands`` entry point
group, so the product never imports them.
"""

from __future__ import annotations

import importlib
import logging
import sys
from importlib.metadata import entry_points

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Synthetic reasoning-trace factory.")

# (job folder, the commands it adds)
JOBS = (
    ("run", "list, run"),
    ("prm", "prm-score, prm-eval"),
    ("prm_label", "prm-label"),
    ("publish", "publish"),
    ("axolotl", "export, config, train"),
    ("serve", "serve"),
    ("eval", "eval"),
    ("onpolicy", "onpolicy"),
    ("select", "select"),
    ("mix", "mix"),
    ("ondevice", "export-model"),
    ("view", "view"),
)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.raiseExceptions = verbose  # a log that cannot be written (full disk) must not print tracebacks
    if not verbose:
        from pipelines.engines.log import hold_warnings

        hold_warnings()  # library warnings go to the run's log file (pipelines/engines/log.py)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s")
    # torchao (distill export-model) warns on import that its CUDA-only kernels do not load on a CPU build
    # and registers enums with torch's pytree, which torch 2.13 calls deprecated
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.ERROR)


for _job, _ in JOBS:
    importlib.import_module(f"distill.{_job}.commands").register(app)
for _plugin in entry_points(group="distill.commands"):
    _plugin.load()(app)


def entrypoint() -> None:
    from distill.command import stop_on_sigterm

    stop_on_sigterm()  # stop like Ctrl-C (a command may install its own)
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    entrypoint()
