"""Start-up of `distill run`: seconds from the command to the teacher's first request, and where they go.

A loopback teacher records when its first chat request arrives; `distill run` is started as a user starts it
(a subprocess, the real CLI). Each run uses a fresh output folder. With ``--importtime`` the CLI also runs under
``python -X importtime`` and the slowest imports are listed. Prints the median of ``--repeat`` runs.

    .venv/bin/python bench/startup.py --repeat 5 [--importtime] [--root DIR]

``--root`` runs the code of another checkout with this venv; ``--compare DIR`` alternates runs of DIR and of this
checkout (a busy machine slows both alike) and prints both. A checkout of a commit:
``mkdir DIR && git archive COMMIT | tar -x -C DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from testing.loopback.teacher import LoopbackTeacher  # noqa: E402


def _answer(messages: list[dict[str, str]], index: int) -> str:
    return "<thought>One.\n\nTwo.</thought>\\boxed{2}"


class FirstRequest(LoopbackTeacher):
    """A loopback teacher that remembers when the first chat request came in (time.monotonic)."""

    first_at: float | None = None

    def complete(self, body: dict) -> dict:
        if self.first_at is None:
            self.first_at = time.monotonic()
        return super().complete(body)


def _spec(folder: Path, base_url: str, problems: int) -> Path:
    source = folder / "p.jsonl"
    source.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n"
                              for i in range(problems)))
    spec = folder / "startup.yaml"
    spec.write_text(f"name: startup\nsource: {{path: {source}, problem_field: question}}\n"
                    f"teacher: {{model: loopback-teacher, base_url: '{base_url}', num_samples: 1}}\n")
    return spec


def time_to_first_request(python_args: list[str], problems: int, root: Path = ROOT) -> tuple[float, float, str]:
    """(seconds to the first request, seconds to the end, stderr) of one `distill run`."""
    with tempfile.TemporaryDirectory(prefix="distill-startup-") as tmp, FirstRequest(_answer) as teacher:
        spec = _spec(Path(tmp), teacher.base_url, problems)
        started = time.monotonic()
        result = subprocess.run([sys.executable, *python_args, "-m", "distill.cli", "run", str(spec), "--out",
                                 str(Path(tmp) / "out")], cwd=root, capture_output=True, text=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
        ended = time.monotonic()
        if result.returncode != 0 or teacher.first_at is None:
            raise SystemExit(f"distill run failed ({result.returncode}):\n{result.stderr[-3000:]}")
        return teacher.first_at - started, ended - started, result.stderr


def slowest_imports(stderr: str, top: int) -> list[tuple[float, str]]:
    """The top-level packages with the largest cumulative import time (``-X importtime`` lines)."""
    totals: dict[str, float] = {}
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\s*)(\S+)", line)
        if match and not match.group(2):  # a module imported at the top level (indent 0)
            totals[match.group(3)] = totals.get(match.group(3), 0.0) + int(match.group(1)) / 1e6
    return sorted(((s, name) for name, s in totals.items()), reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--importtime", action="store_true", help="also list the slowest top-level imports")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose pipelines/ is run")
    parser.add_argument("--compare", type=Path, help="another checkout, run in turn with --root")
    args = parser.parse_args()
    roots = [args.compare, args.root] if args.compare else [args.root]
    firsts: dict[Path, list[float]] = {root: [] for root in roots}
    totals: dict[Path, list[float]] = {root: [] for root in roots}
    for _ in range(args.repeat):
        for root in roots:
            first, total, _ = time_to_first_request([], args.problems, root)
            firsts[root].append(first)
            totals[root].append(total)
    for root in roots:
        print(f"{root}: distill run → first teacher request: median {statistics.median(firsts[root]):.2f} s "
              f"(min {min(firsts[root]):.2f}, max {max(firsts[root]):.2f}; {args.repeat} runs); whole run of "
              f"{args.problems} problems: median {statistics.median(totals[root]):.2f} s")
    if args.importtime:
        _, _, stderr = time_to_first_request(["-X", "importtime"], args.problems, args.root)
        for seconds, name in slowest_imports(stderr, 15):
            print(f"  import {name:<28} {seconds:6.2f} s")


if __name__ == "__main__":
    main()
