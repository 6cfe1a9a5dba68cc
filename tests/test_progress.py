"""Progress of a run: one bar on a terminal, a line every N seconds elsewhere; distilabel's chatter and library
warnings go to <cache>/run.log unless -v."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import time
from pathlib import Path

from conftest import DISTILL, ROOT, run_distill, write_jsonl, write_spec

from pipelines.run.progress import PartsTally, Progress, describe, eta_s
from pipelines.store import write_part
from testing.loopback.teacher import LoopbackTeacher

PROBLEMS = 12


def _answer(messages: list[dict[str, str]], index: int) -> str:
    a, b = map(int, re.findall(r"\d+", messages[-1]["content"])[:2])
    if a == 3:
        return {"content": "boom", "finish_reason": "abort"}  # a teacher error
    return f"<thought>Add {a} and {b}.</thought>\\boxed{{{a + b + (index == 1)}}}"


def _records(first: int, count: int, reason: str | None = None) -> list[dict]:
    return [{"problem_id": str(i), "problem_index": i, "sample_index": s, "problem": "p", "gold": "1",
             "kept": reason is None and s == 0, "rejection_reason": reason if reason else (None if s == 0 else "x"),
             "completion_tokens": 10} for i in range(first, first + count) for s in range(2)]


def test_the_line_counts_what_the_parts_hold(tmp_path: Path):
    write_part(tmp_path, _records(0, 3))  # written by an earlier run: not this run's
    tally = PartsTally(tmp_path).start()
    write_part(tmp_path, _records(3, 4))
    write_part(tmp_path, _records(7, 1, reason="teacher_error"))
    tally.poll()
    assert describe(tally, 3, 20, 8.0) == ("8/20 problems, 10 samples, kept 40.0%, 2 teacher errors, 12 tokens/s, "
                                           "ETA 0:19")
    assert describe(PartsTally(tmp_path), 0, None, 0.0) == ("0/? problems, 0 samples, kept -, 0 teacher errors, "
                                                            "- tokens/s, ETA ?")
    assert eta_s(5, 20, 10.0) == 30.0 and eta_s(0, 20, 10.0) is None and eta_s(5, None, 1.0) is None
    assert describe(tally, 0, 5, 7200.0).endswith("ETA 0:00") and eta_s(1, 2, 3600.0) == 3600.0


def test_without_a_terminal_a_line_every_period_and_one_at_the_end():
    stream = io.StringIO()
    with Progress("generate", 10, every_s=3600, stream=stream, tty=False) as progress:
        progress.update(1, "one")  # the first update is shown at once
        progress.update(2, "two")  # within the period: not shown
        time.sleep(0.6)
        progress.update(3, "three")
    assert stream.getvalue().splitlines() == ["generate: one", "generate: three"]


def _spec(tmp_path: Path, base_url: str) -> Path:
    source = write_jsonl(tmp_path / "p.jsonl", [{"question": f"What is {i} + 1?", "answer": str(i + 1)}
                                                for i in range(PROBLEMS)])
    return write_spec(tmp_path / "p.yaml", source, teacher={"base_url": base_url, "max_retries": 0},
                      run={"batch_size": 4})


def test_a_run_without_a_terminal_prints_progress_lines_and_keeps_the_chatter_in_its_log(tmp_path: Path):
    with LoopbackTeacher(_answer) as teacher:
        result = run_distill("run", _spec(tmp_path, teacher.base_url), "--out", tmp_path / "out",
                             "--progress-every", "0.1")
    lines = [line for line in result.stderr.splitlines() if line.startswith("generate: ")]
    assert lines and lines[-1] == (f"generate: {PROBLEMS}/{PROBLEMS} problems, {2 * PROBLEMS} samples, kept 45.8%, "
                                   f"2 teacher errors, " + lines[-1].split("teacher errors, ")[1])
    assert re.fullmatch(r"[\d,]+ tokens/s, ETA 0:00", lines[-1].split("teacher errors, ")[1])
    log = (tmp_path / "out" / ".cache" / "run.log").read_text()
    for chatter in ("UnsupportedFieldAttributeWarning", "distilabel.step.write", "progress: 12/12 problems"):
        assert chatter in log and chatter not in result.stderr + result.stdout, chatter
    assert "running p: 12 problems to do" in result.stderr  # the factory's own lines stay


def test_verbose_shows_everything(tmp_path: Path):
    with LoopbackTeacher(_answer) as teacher:
        result = run_distill("-v", "run", _spec(tmp_path, teacher.base_url), "--out", tmp_path / "out")
    shown = re.sub(r"\s+", "", result.stdout + result.stderr)  # distilabel's rich handler wraps, on stdout
    assert "distilabel.step.write" in shown and "UnsupportedFieldAttributeWarning" in shown


def test_on_a_terminal_one_bar(tmp_path: Path):
    with LoopbackTeacher(_answer) as teacher:
        spec = _spec(tmp_path, teacher.base_url)
        main, child = pty.openpty()
        proc = subprocess.Popen([*DISTILL, "run", str(spec), "--out", str(tmp_path / "out")], cwd=ROOT,
                                stdin=child, stdout=child, stderr=child, env={**os.environ, "COLUMNS": "200"})
        os.close(child)
        chunks = []
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the child side closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=120) == 0
        os.close(main)
    screen = b"".join(chunks).decode(errors="replace")
    bar_lines = [line for line in screen.split("\n") if "generate" in line]
    assert len(bar_lines) == 1, bar_lines  # one bar, redrawn in place (\r), not a line per update
    final = bar_lines[0].split("\r")[-2]
    assert "━" in final and f"{PROBLEMS}/{PROBLEMS}" in final
    assert "problems · 24 samples · kept 45.8% · 2 errors" in final
    assert "UnsupportedFieldAttributeWarning" not in screen and "Processing batch" not in screen
