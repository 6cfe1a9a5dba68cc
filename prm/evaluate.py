"""ProcessBench-style evaluation of a PRM on traces labelled with the index of their first wrong step.

A trace's prediction is the first step scored below the threshold (-1: none). Accuracy is measured
separately on erroneous traces (the predicted index must equal the label) and on correct ones (the
prediction must be -1); F1 is their harmonic mean, as in ProcessBench (Zheng et al., 2024).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prm.aggregate import first_error
from prm.config import SpecError
from prm.jsonl import json_lines

MINI_SET = Path(__file__).parent / "data" / "processbench_mini.jsonl"


@dataclass(frozen=True)
class LabelledTrace:
    id: str
    problem: str
    steps: list[str]
    label: int  # index of the first wrong step, -1 when every step is right


def first_false(labels: list[Any]) -> int:
    """TRL stepwise labels (``distill prm-label``'s ``labels``) → the index of the first wrong step, -1 if none."""
    if not all(isinstance(v, bool) for v in labels):
        raise ValueError("labels must be booleans")
    return next((i for i, good in enumerate(labels) if not good), -1)


def load_labelled(path: Path) -> list[LabelledTrace]:
    """Read a jsonl of {"problem", "steps", "label"} (optional "id"), or of TRL stepwise rows {"prompt",
    "completions", "labels": [bool]} as ``distill prm-label`` writes them; errors name the line."""
    if not path.is_file():
        raise SpecError(f"--data: {path} not found; give a jsonl with problem, steps, label")
    traces = []
    for number, row in json_lines(path, "--data"):
        try:
            if "completions" in row:  # TRL stepwise: the first false label is the first wrong step
                row = {**row, "problem": row["prompt"], "steps": row["completions"],
                       "label": first_false(row["labels"])}
                if len(row["labels"]) != len(row["steps"]):
                    raise ValueError(f"{len(row['labels'])} labels for {len(row['steps'])} completions")
            steps, label = row["steps"], int(row["label"])
            if not isinstance(steps, list) or not steps or not all(isinstance(s, str) and s.strip() for s in steps):
                raise ValueError("steps must be a non-empty list of non-empty strings")
            if not -1 <= label < len(steps):
                raise ValueError(f"label {label} is not -1 or a step index below {len(steps)}")
            traces.append(LabelledTrace(str(row.get("id", number)), str(row["problem"]), steps, label))
        except (ValueError, KeyError, TypeError) as exc:
            raise SpecError(f"--data: {path}:{number}: {exc}; each line needs problem, steps, label (or prompt, "
                            "completions, labels)") from None
    if not traces:
        raise SpecError(f"--data: {path} has no traces")
    return traces


def predictions(step_scores: Sequence[Sequence[float]], threshold: float) -> list[int]:
    return [-1 if (i := first_error(s, threshold)) is None else i for s in step_scores]


def processbench_f1(predicted: Sequence[int], labels: Sequence[int]) -> dict[str, Any]:
    """Accuracy on erroneous traces, on correct traces, and their harmonic mean (F1)."""
    erroneous = [p == y for p, y in zip(predicted, labels, strict=True) if y != -1]
    correct = [p == -1 for p, y in zip(predicted, labels, strict=True) if y == -1]
    acc_error = sum(erroneous) / len(erroneous) if erroneous else 0.0
    acc_correct = sum(correct) / len(correct) if correct else 0.0
    total = acc_error + acc_correct
    return {"f1": 2 * acc_error * acc_correct / total if total else 0.0, "acc_erroneous": acc_error,
            "acc_correct": acc_correct, "n_erroneous": len(erroneous), "n_correct": len(correct)}


def sweep(step_scores: Sequence[Sequence[float]], labels: Sequence[int],
          thresholds: Sequence[float] = tuple(i / 20 for i in range(1, 20))) -> tuple[float, dict[str, Any]]:
    """The threshold with the best F1 on this set (an oracle figure: report it as such)."""
    results = [(t, processbench_f1(predictions(step_scores, t), labels)) for t in thresholds]
    return max(results, key=lambda r: r[1]["f1"])


def evaluate(scorer: Any, traces: list[LabelledTrace], threshold: float) -> dict[str, Any]:
    """Score the labelled traces' steps with ``scorer`` and report F1 at ``threshold`` and the best one."""
    rewards = scorer.step_rewards([(t.problem, t.steps) for t in traces])
    if any(r is None for r in rewards):
        raise SpecError("--max-tokens: some labelled traces are longer than the PRM's max_tokens; raise it")
    labels = [t.label for t in traces]
    best_threshold, best = sweep(rewards, labels)
    return {**processbench_f1(predictions(rewards, threshold), labels), "threshold": threshold,
            "best_threshold": best_threshold, "best_f1": best["f1"], "scoring": scorer.stats.as_dict()}
