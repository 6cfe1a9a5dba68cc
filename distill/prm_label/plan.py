"""Math-Shepherd labelling, the pure part: traces to step prefixes, rollouts to per-step labels, labels to rows.

A step's label comes from what the teacher does when it continues the trace from the end of that step: of N
completions, the soft label is the fraction that reach the gold answer, the hard label is whether any does
(Wang et al., 2024, "Math-Shepherd"). The prefix is the trace's own text, verbatim, up to the end of the step,
so the teacher continues exactly what it (or another model) wrote.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prm.split import split_steps

REASONING_START = "<think>"  # R1's opening tag: vLLM's reasoning parsers strip it (only it) from the reasoning


@dataclass(frozen=True)
class StepTrace:
    """One trace to label: its steps and the completion text that comes before the thought."""

    id: str  # "<problem_id>/<sample_index>"
    problem_id: str
    sample_index: int
    problem: str
    gold: str
    head: str  # the completion up to the thought (e.g. "<thought>\n")
    steps: list[str]  # verbatim; "".join(steps) is the thought
    correct: bool | None = None  # the whole trace's verdict in the dataset

    def prefix(self, k: int) -> str:
        """The reply up to the end of step ``k`` (0-based), which the teacher continues."""
        return self.head + "".join(self.steps[:k + 1])


@dataclass
class Skipped:
    """Why records were not labelled (the counts go to stats.json)."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1


def step_traces(records: Iterable[dict[str, Any]], split: str = "auto", pattern: str | None = None,
                skipped: Skipped | None = None) -> list[StepTrace]:
    """The records (kept and rejected) that can be labelled: a gold answer, a thought with steps, found verbatim
    in the completion. The others are counted in ``skipped`` by reason."""
    skipped = skipped if skipped is not None else Skipped()
    traces = []
    for record in records:
        thought, completion, gold = record.get("thought"), record.get("completion"), record.get("gold")
        if gold is None or str(gold).strip() == "":
            skipped.add("no_gold")
            continue
        if not thought or not str(thought).strip():
            skipped.add("no_thought")
            continue
        head = _head(completion, record.get("reasoning_content"), thought)
        if head is None:  # the completion was rewritten: the reply to continue is not there
            skipped.add("thought_not_in_completion")
            continue
        steps = split_steps(thought, split, pattern)
        if not steps:
            skipped.add("no_steps")
            continue
        sample_index = int(record.get("sample_index") or 0)
        traces.append(StepTrace(id=f"{record['problem_id']}/{sample_index}", problem_id=str(record["problem_id"]),
                                sample_index=sample_index, problem=str(record["problem"]), gold=str(gold),
                                head=head, steps=steps, correct=record.get("correct")))
    return traces


def _head(completion: str | None, reasoning: str | None, thought: str) -> str | None:
    """What the reply held before the thought. A thought that a server's reasoning parser took out of the reply
    was written after the opening tag (R1's ``<think>``), which the prefix then restores."""
    if completion and (start := completion.find(thought)) >= 0:
        return completion[:start]
    if reasoning and (start := reasoning.find(thought)) >= 0:
        return REASONING_START + reasoning[:start]
    return None


def prefix_id(trace_id: str, k: int) -> str:
    return f"{trace_id}#{k}"


def prefix_rows(traces: Sequence[StepTrace], steps: dict[str, list[int]]) -> list[dict[str, Any]]:
    """The source rows of one rollout run: one per (trace, step) asked for in ``steps`` (trace id → indices)."""
    by_id = {t.id: t for t in traces}
    return [{"id": prefix_id(trace_id, k), "problem": by_id[trace_id].problem, "gold": by_id[trace_id].gold,
             "prefix": by_id[trace_id].prefix(k)}
            for trace_id, ks in steps.items() for k in ks]


@dataclass(frozen=True)
class StepLabel:
    soft: float  # the fraction of completions that reached the gold answer
    hard: bool  # any did
    rollouts: int  # completions that came back (teacher errors are not counted)


def step_label(samples: Sequence[dict[str, Any]]) -> StepLabel | None:
    """The label of one prefix from its completions (dataset records); None when none came back."""
    valid = [s for s in samples if s.get("rejection_reason") != "teacher_error"]
    if not valid:
        return None
    right = sum(s.get("correct") is True for s in valid)
    return StepLabel(soft=right / len(valid), hard=right > 0, rollouts=len(valid))


def next_steps(traces: Sequence[StepTrace], labels: dict[str, dict[int, StepLabel]], k: int,
               max_steps: int) -> dict[str, list[int]]:
    """First-error budget, round ``k``: the traces whose steps 0..k-1 all have a positive hard label."""
    out: dict[str, list[int]] = {}
    for trace in traces:
        if k >= min(len(trace.steps), max_steps):
            continue
        done = labels.get(trace.id, {})
        if all(i in done and done[i].hard for i in range(k)):
            out[trace.id] = [k]
    return out


def all_steps(traces: Sequence[StepTrace], max_steps: int) -> dict[str, list[int]]:
    """Every step up to the cap, in one round."""
    return {t.id: list(range(min(len(t.steps), max_steps))) for t in traces}


def first_error(hard: Sequence[bool]) -> int:
    """The index of the first step with a negative hard label, -1 when there is none (ProcessBench's label)."""
    return next((i for i, ok in enumerate(hard) if not ok), -1)


def label_row(trace: StepTrace, labels: dict[int, StepLabel], until: str) -> dict[str, Any] | None:
    """The trace in TRL's stepwise-supervised format (``prompt``, ``completions``, ``labels``) plus the soft labels.

    The steps are the labelled ones, in order; with the first-error budget the row ends at the first failing
    step. None when step 0 has no label (its rollouts all failed).
    """
    ks = []
    for k in range(len(trace.steps)):
        if k not in labels:
            break
        ks.append(k)
        if until == "first-error" and not labels[k].hard:
            break
    if not ks:
        return None
    hard = [labels[k].hard for k in ks]
    return {"id": trace.id, "problem_id": trace.problem_id, "sample_index": trace.sample_index,
            "prompt": trace.problem, "completions": [trace.steps[k].strip() for k in ks], "labels": hard,
            "soft_labels": [round(labels[k].soft, 6) for k in ks], "rollouts": [labels[k].rollouts for k in ks],
            "first_error": first_error(hard), "steps_in_trace": len(trace.steps), "gold": trace.gold,
            "trace_correct": trace.correct}
