"""A run reads its source once and builds its filters once: fresh, resumed and finished (pipelines/run/plan.py).

The real CLI runs the real distilabel pipeline against a loopback teacher, with a wrapper at the function that
opens a local source or benchmark file (``pipelines.source._local_rows``) and at the filters' constructor; each
call appends a line to a log file, from the main process and from distilabel's forked workers alike.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from conftest import DISTILL, ROOT, write_jsonl, write_spec

from pipelines.store import part_files
from testing.loopback.teacher import LoopbackTeacher

PLANTED = "A train leaves the station at noon and travels three hundred miles north at a steady sixty miles an hour."
ROWS = [{"question": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1)} for i in range(8)]
ROWS[3] = {"question": PLANTED, "answer": "5"}  # in the benchmark: decontamination drops it
ROWS[6] = dict(ROWS[1])  # an exact duplicate of problem 1: dedupe drops it
KEPT = [str(i) for i in range(8) if i not in (3, 6)]

COUNTING_CLI = """
import os, sys
import pipelines.source as source
from pipelines.filters.apply import ProblemFilter

log, real_rows, real_init = os.environ["READS_LOG"], source._local_rows, ProblemFilter.__init__

def note(line):
    with open(log, "a") as handle:
        handle.write(line + "\\n")

def counted_rows(path):
    note(f"open {path}")  # a generator: this runs when the reader starts, i.e. opens the file
    yield from real_rows(path)

def counted_init(self, *args, **kwargs):
    note("filters")
    real_init(self, *args, **kwargs)

source._local_rows, ProblemFilter.__init__ = counted_rows, counted_init
sys.argv = ["distill", *sys.argv[1:]]
from distill.cli import entrypoint
entrypoint()
"""


def _sum(messages: list[dict[str, str]], index: int) -> str:
    numbers = [int(n) for n in re.findall(r"\d+", messages[-1]["content"])[:2]]
    return f"<thought>Add them.\n\nThat makes {sum(numbers)}.</thought>\\boxed{{{sum(numbers)}}}"


def _counted_run(spec: Path, out: Path, url: str, log: Path) -> dict[str, int]:
    """``distill run`` with the counting wrapper; the number of each line it logged."""
    log.unlink(missing_ok=True)
    result = subprocess.run([DISTILL[0], "-c", COUNTING_CLI, "run", str(spec), "--out", str(out), "--teacher-url",
                             url], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "READS_LOG": str(log)})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = log.read_text().splitlines() if log.exists() else []
    return {line: lines.count(line) for line in lines}


def test_a_run_reads_its_source_once_fresh_resumed_and_finished(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "problems.jsonl", ROWS)
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"problem": PLANTED}, {"problem": "Name the largest ocean."}])
    spec = write_spec(tmp_path / "plan.yaml", source, run={"batch_size": 2},
                      decontamination={"benchmarks": [{"path": str(bench), "name": "bench"}], "max_df": None})
    out, log = tmp_path / "out", tmp_path / "reads.log"
    once = {f"open {source}": 1, f"open {bench}": 1, "filters": 1}
    with LoopbackTeacher(_sum) as teacher:
        assert _counted_run(spec, out, teacher.base_url, log) == once  # fresh
        asked = [r["messages"][-1]["content"] for r in teacher.requests]
        assert sorted(asked) == sorted(ROWS[int(i)]["question"] for i in KEPT)

        # resumed: a part is lost (as if the run had been killed before writing it); only its problems are asked
        lost = part_files(out / ".cache")[-1]
        lost_ids = set(pq.read_table(lost, columns=["problem_id"]).column(0).to_pylist())
        lost.unlink()
        before = len(teacher.requests)
        assert _counted_run(spec, out, teacher.base_url, log) == once
        again = [r["messages"][-1]["content"] for r in teacher.requests[before:]]
        assert lost_ids and sorted(again) == sorted(ROWS[int(i)]["question"] for i in lost_ids)

        # finished: nothing to ask, the dataset is written again from the same single read
        before = len(teacher.requests)
        assert _counted_run(spec, out, teacher.base_url, log) == once
        assert len(teacher.requests) == before

    frame = pd.read_parquet(out)
    assert sorted(set(frame.problem_id)) == sorted(KEPT) and not frame.duplicated(["problem_id", "sample_index"]).any()
    stats = json.loads((out / "__meta__" / "stats.json").read_text())
    assert stats["problems"] == len(KEPT) and stats["runs"] == 3
    assert stats["decontamination"]["dropped"][0]["problem_id"] == "3"
    assert stats["dedupe"]["exact"] == 1 and stats["dedupe"]["dropped"][0]["duplicate_of"] == "1"
