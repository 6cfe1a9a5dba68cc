"""One way to run a spec as a sub-job of a longer command (eval, onpolicy, prm-label, the lab): ``run_subjob``.

The parent writes the effective spec to a file and runs ``python -m pipelines.run.subjob SPEC OUT`` (``run_spec``
with its preflight, exactly what ``distill run SPEC --out OUT`` does) in a child process with its own log.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pipelines.engines.process_tree import live_group_members
from pipelines.spec import DatasetSpec, SpecError, dump_spec
from pipelines.store import meta_dir, write_text_atomic

ERROR_PREFIX = "error: "


def run_subjob(spec: DatasetSpec, out_dir: Path, spec_path: Path, log_path: Path, api_key: str | None = None,
               judge_api_key: str | None = None, progress_every_s: float = 30.0) -> dict[str, Any]:
    """Run ``spec`` into the dataset folder ``out_dir`` in a child process; returns the run's stats.

    Why a child process, always: distilabel 1.5.3 closes its logging queue and tears down its worker pool when a
    pipeline ends, and a second pipeline in the same process can hang in that teardown (an in-process
    transformers teacher does it every time); a command that runs several specs (one per model and set, per
    round) would hang. A child per sub-job ends cleanly whatever the teacher, keeps the run's output in its own
    log (``log_path``), and is stopped as a whole on Ctrl-C or SIGTERM: SIGINT to its process group (distilabel's
    graceful stop, resume-safe), SIGKILL after a grace period. The cost is the child's imports, a few seconds.

    ``spec_path`` receives the effective spec (a file ``distill run`` also takes). Keys reach the child in its
    environment, under the names the spec gives (``api_key_env``), never on its command line. A failure is a
    ``SpecError`` whose message is the child's one error line, unchanged.
    """
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(spec_path, dump_spec(spec))
    env = dict(os.environ)
    if api_key is not None:
        env[spec.teacher.api_key_env] = api_key
    if judge_api_key is not None and spec.judge is not None:
        env[spec.judge.api_key_env] = judge_api_key
    argv = [sys.executable, "-m", "pipelines.run.subjob", str(spec_path), str(out_dir),
            "--progress-every", str(progress_every_s)]
    with log_path.open("ab") as log_file:
        child = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True, env=env)
        try:
            code = child.wait()
        except BaseException:
            stop_group(child)
            raise
    if code != 0:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        error = next((line.removeprefix(ERROR_PREFIX) for line in reversed(lines) if line.startswith(ERROR_PREFIX)),
                     f"exit status {code} (log: {log_path})")
        raise SpecError(error)
    return json.loads((meta_dir(out_dir) / "stats.json").read_text(encoding="utf-8"))


def stop_group(child: subprocess.Popen[bytes], grace_s: float = 60.0) -> None:
    """SIGINT to the child's process group, SIGKILL to what still lives after ``grace_s``."""
    for sig, wait in ((signal.SIGINT, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while live_group_members(child.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not live_group_members(child.pid):
            break
    try:
        child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def main(argv: list[str] | None = None) -> int:
    """The child: ``run_spec`` of a spec file; a failure is one ``error: …`` line (keys masked), as in the CLI."""
    from pipelines.engines.log import hold_warnings
    from pipelines.errors import INTERRUPTED, error_line, raise_interrupted
    from pipelines.run.runner import run_spec
    from pipelines.spec import load_spec

    parser = argparse.ArgumentParser(prog="python -m pipelines.run.subjob")
    parser.add_argument("spec")
    parser.add_argument("out", type=Path)
    parser.add_argument("--progress-every", type=float, default=30.0)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, raise_interrupted)  # stop like Ctrl-C, as the CLI does
    hold_warnings()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    secrets: list[str | None] = []
    try:
        spec, _ = load_spec(args.spec)
        api_key = os.environ.get(spec.teacher.api_key_env)
        judge_key = os.environ.get(spec.judge.api_key_env) if spec.judge else None
        secrets += [api_key, judge_key]
        stats = run_spec(spec, args.out, api_key=api_key, judge_api_key=judge_key,
                         progress_every_s=args.progress_every)
    except KeyboardInterrupt as exc:
        print(f"{ERROR_PREFIX}{INTERRUPTED}", file=sys.stderr)
        return 128 + getattr(exc, "signum", signal.SIGINT)
    except SpecError as exc:
        print(f"{ERROR_PREFIX}{exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - one line for the parent to show; the traceback in the log
        logging.getLogger("distill").debug("sub-job failed", exc_info=True)
        print(f"{ERROR_PREFIX}{error_line(exc, secrets=secrets)}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {stats['samples']} samples of {stats['problems']} problems, kept {stats['kept']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
