"""Ground truth for the lab's PRM: the index of the first wrong step of an addition trace, known exactly.

An addition thought has one line per column (``lab.tasks.addition_steps``); the first line that differs from
the right one, or a missing or extra line, is the first error (ProcessBench's label: -1 when every step is
right). The held-out traces the teacher writes, labelled this way, are what ``distill prm-eval`` scores a
trained PRM on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lab.tasks import addition_steps
from prm.split import split_steps

_PROBLEM = re.compile(r"^\s*(\d+)\s*\+\s*(\d+)\s*$")


def first_wrong_step(problem: str, steps: list[str]) -> int:
    """The first step of ``steps`` (stripped lines) that is not the right column sum; -1 when all are right."""
    match = _PROBLEM.match(problem)
    if not match:
        raise ValueError(f"not an addition problem: {problem!r}")
    expected, _ = addition_steps(int(match.group(1)), int(match.group(2)))
    for k in range(max(len(steps), len(expected))):
        if k >= len(steps) or k >= len(expected) or steps[k].strip() != expected[k]:
            return min(k, len(steps) - 1)  # a missing last line is an error of the last step written
    return -1


def labelled_traces(records: Iterable[dict[str, Any]], split: str = "lines") -> list[dict[str, Any]]:
    """``prm-eval`` rows (problem, steps, label) for the records with a thought, one per distinct trace."""
    rows, seen = [], set()
    for record in records:
        steps = [s.strip() for s in split_steps(record.get("thought"), split)]
        steps = [s for s in steps if s]
        key = (record["problem"], tuple(steps))
        if not steps or key in seen:
            continue
        seen.add(key)
        rows.append({"id": f"{record['problem_id']}/{record.get('sample_index', 0)}", "problem": record["problem"],
                     "steps": steps, "label": first_wrong_step(record["problem"], steps)})
    return rows


def write_labelled(records: Iterable[dict[str, Any]], path: Path, split: str = "lines") -> dict[str, int]:
    """Write the labelled set; returns how many traces are erroneous and how many are right."""
    rows = labelled_traces(records, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return {"traces": len(rows), "erroneous": sum(r["label"] >= 0 for r in rows),
            "correct": sum(r["label"] == -1 for r in rows)}


def write_true_labels(labels: Path, out: Path) -> int:
    """``prm-label`` rows with their labels replaced by the truth (every step labelled): the oracle a PRM trained
    on Monte Carlo labels is measured against (docs/lab.md). Returns the rows written."""
    rows = [json.loads(line) for line in labels.read_text(encoding="utf-8").splitlines() if line.strip()]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for row in rows:
            wrong = first_wrong_step(row["prompt"], row["completions"])
            truth = [wrong == -1 or k < wrong for k in range(len(row["completions"]))]
            handle.write(json.dumps({"prompt": row["prompt"], "completions": row["completions"],
                                     "labels": truth}) + "\n")
    return len(rows)


if __name__ == "__main__":  # python -m lab.step_truth LABELS.jsonl OUT.jsonl
    import sys

    print(write_true_labels(Path(sys.argv[1]), Path(sys.argv[2])))
