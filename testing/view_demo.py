"""Folders to look at with ``distill view``, made offline in about two minutes, and the README's screenshots.

``out/view-demo/arith`` is a real ``distill run`` (a loopback teacher answering column additions, some samples
wrong or without a thought; the test suite's tiny random PRM scoring the steps, threshold at its median, so about
half the verified traces are rejected at a first error). ``out/view-demo/eval`` is a real ``distill eval`` of two
loopback "models" on a small set of sums. The tiny PRM is random: its scores show the plumbing, not judgement.

    .venv/bin/python -m testing.view_demo          # builds out/view-demo; then make view DIR=out/view-demo
    .venv/bin/python -m testing.view_demo --screenshots docs/img   # and the four PNGs of README.md (chromium)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from testing.loopback.teacher import LoopbackTeacher
from testing.tiny_model import build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
DISTILL = [sys.executable, "-m", "distill.cli"]
N_PROBLEMS = 40


def arith_reply(messages: list[dict[str, str]], index: int) -> str:
    """Column addition with its steps; sample 1 of every third problem slips on the ones, some skip the thought."""
    a, b = (int(x) for x in messages[-1]["content"].split("What is ")[1].split("?")[0].split("+"))
    slip = index == 1 and a % 3 == 0
    ones = (a % 10 + b % 10) + (1 if slip else 0)
    total = a + b + (1 if slip else 0)
    if index == 3 and a % 4 == 1:
        return f"The answer is {total}"
    return (f"<thought>\nStep 1: write {a} above {b}, ones under ones.\n\n"
            f"Step 2: ones: {a % 10} + {b % 10} = {ones}{', carry 1' if ones >= 10 else ''}.\n\n"
            f"Step 3: tens: {a // 10} + {b // 10}{' + 1' if ones >= 10 else ''} = {total // 10}.\n\n"
            f"Step 4: so {a} + {b} = {total}.\n</thought>\n\\boxed{{{total}}}")


def run(args: list[Any]) -> None:
    result = subprocess.run([*DISTILL, *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"distill {args[0]} failed:\n{result.stderr[-3000:]}")


def build_run(out: Path, work: Path) -> None:
    prm = build_tiny_model(work / "tiny-prm")
    problems = work / "problems.jsonl"
    problems.write_text("".join(json.dumps({"question": f"What is {17 + 7 * i}+{25 + 9 * i}?",
                                            "answer": str(42 + 16 * i)}) + "\n" for i in range(N_PROBLEMS)))
    with LoopbackTeacher(arith_reply) as teacher:
        spec = {"name": "arith", "description": "Two-digit additions, for the viewer's demo.",
                "source": {"path": str(problems), "problem_field": "question", "answer_field": "answer"},
                "teacher": {"backend": "openai", "model": "loopback-teacher", "base_url": teacher.base_url,
                            "num_samples": 4, "max_new_tokens": 256},
                "verification": "math", "dedupe": {"enabled": False}, "run": {"batch_size": 8},
                "prm": {"model": str(prm), "style": "math-shepherd", "threshold": 0.0}}
        path = work / "arith.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        run(["run", path, "--out", work / "scored", "--fresh"])
        import pandas as pd

        scores = pd.read_parquet(work / "scored", columns=["prm_score"]).prm_score.dropna()
        spec["prm"]["threshold"] = round(float(scores.median()), 4)  # the random PRM rejects about half
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        run(["run", path, "--out", out, "--fresh"])


def build_eval(out: Path, work: Path) -> None:
    sums = [{"question": f"What is {i} + {2 * i}?", "answer": str(3 * i)} for i in range(1, 7)]
    (work / "sums.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sums))
    (work / "sums.yaml").write_text(yaml.safe_dump({
        "name": "sums", "family": "demo", "samples": 4, "max_new_tokens": 64,
        "source": {"path": str(work / "sums.jsonl"), "problem_field": "question", "answer_field": "answer"}}))

    def careful(messages: list[dict[str, str]], index: int) -> str:
        a = int(messages[-1]["content"].split("What is ")[1].split(" ")[0])
        return f"<thought>{a} + {2 * a} = {3 * a + (index == 3)}</thought>\n\n\\boxed{{{3 * a + (index == 3)}}}"

    def hasty(messages: list[dict[str, str]], index: int) -> str:
        a = int(messages[-1]["content"].split("What is ")[1].split(" ")[0])
        return f"<thought>about {3 * a}</thought>\n\n\\boxed{{{3 * a + (index + a) % 3}}}"

    with LoopbackTeacher(careful, model="careful") as c, LoopbackTeacher(hasty, model="hasty") as h:
        run(["eval", "--set", work / "sums.yaml", "--model", f"careful={c.base_url}", "--model",
             f"hasty={h.base_url}", "--out", out])


def screenshots(root: Path, folder: Path) -> list[Path]:
    """The table, a sample, the summary and the eval page, by headless chromium against a viewer on ``root``."""
    import pandas as pd

    from distill.serve.server import free_port

    port = free_port()
    viewer = subprocess.Popen([*DISTILL, "view", str(root), "--port", str(port)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    frame = pd.read_parquet(root / "arith")
    rejected = frame[frame.rejection_reason == "prm"].sort_values(["problem_index", "sample_index"]).iloc[0]
    pages = {"view-table.png": ("/table?at=arith", "1400,820"),
             "view-sample.png": (f"/sample?at=arith&pid={rejected.problem_id}&s={rejected.sample_index}",
                                 "1400,1250"),
             "view-summary.png": ("/summary?at=arith", "1400,1000"),
             "view-eval.png": ("/eval?at=eval", "1400,1000")}
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        time.sleep(3)  # the viewer starts (it answers in well under a second after)
        for name, (url, size) in pages.items():
            subprocess.run([shutil.which("chromium") or "chromium", "--headless=new", "--no-sandbox", "--disable-gpu",
                            "--hide-scrollbars", f"--window-size={size}", f"--screenshot={folder / name}",
                            f"http://127.0.0.1:{port}{url}"], check=True, capture_output=True, timeout=120)
            written.append(folder / name)
    finally:
        viewer.terminate()
        viewer.wait(timeout=10)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "view-demo")
    parser.add_argument("--screenshots", type=Path, default=None, help="Write the README's PNGs to this folder.")
    args = parser.parse_args()
    work = args.out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    build_run(args.out / "arith", work)
    build_eval(args.out / "eval", work)
    print(f"built {args.out}: distill view {args.out}")
    if args.screenshots:
        for path in screenshots(args.out, args.screenshots):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
