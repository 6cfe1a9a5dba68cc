"""Consensus filtering of Monte Carlo labels with an LLM judge (Zhang et al., 2025, "The Lessons of Developing
Process Reward Models in Mathematical Reasoning"): the judge reads the numbered steps and names the earliest
wrong one (ProcessBench's critic prompt); a trace is kept only when that index equals the first step whose hard
label is negative (-1 for both when every step is right). Verdicts are appended to a jsonl as they come, so a
rerun asks only for the traces not judged yet.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.spec import JudgeConfig
from pipelines.teachers.retry import BadResponse, TeacherFailure, call_with_retries

SYSTEM = ("You review step-by-step solutions. Find the earliest step that contains an error (a wrong calculation, "
          "a wrong fact, or a step that does not follow). Reply with its index in \\boxed{}, e.g. \\boxed{2}; "
          "reply \\boxed{-1} when every step is correct.")
_BOXED = re.compile(r"\\boxed\{\s*(-?\d+)\s*\}")


def step_messages(problem: str, steps: Sequence[str], reference: str | None = None) -> list[dict[str, str]]:
    """The judge's chat: the problem, the reference answer, and the steps tagged ``<step k>``."""
    tagged = "\n".join(f"<step {k}>\n{step.strip()}\n</step {k}>" for k, step in enumerate(steps))
    parts = [f"Problem:\n{problem.strip()}"]
    if reference:
        parts.append(f"Reference answer:\n{reference.strip()}")
    parts.append(f"Solution, in {len(steps)} steps numbered from 0:\n{tagged}")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def parse_first_error(text: str | None, n_steps: int) -> int:
    """The index in the judge's last ``\\boxed{}``; BadResponse (retried) when there is none or it is out of range."""
    found = _BOXED.findall(text or "")
    if not found:
        raise BadResponse("judge reply without \\boxed{index}")
    index = int(found[-1])
    if not -1 <= index < n_steps:
        raise BadResponse(f"judge named step {index} of {n_steps}")
    return index


class StepJudge:
    """Asks the judge endpoint for the first wrong step of each trace, ``max_concurrency`` at once."""

    def __init__(self, config: JudgeConfig, api_key: str | None = None) -> None:
        self.config = config
        self.api_key = api_key

    async def _all(self, rows: Sequence[dict[str, Any]]) -> list[int | TeacherFailure]:
        from openai import AsyncOpenAI

        client = AsyncOpenAI(base_url=self.config.base_url, api_key=self.api_key or "EMPTY",
                             timeout=self.config.timeout_s, max_retries=0)
        room = asyncio.Semaphore(self.config.max_concurrency)

        async def one(row: dict[str, Any]) -> int:
            messages = step_messages(row["prompt"], row["completions"], row.get("gold"))

            async def call() -> int:
                response = await client.chat.completions.create(
                    model=self.config.model, messages=messages, temperature=self.config.temperature,
                    max_tokens=self.config.max_new_tokens)
                if not response.choices:
                    raise BadResponse("judge response without choices")
                return parse_first_error(response.choices[0].message.content, len(row["completions"]))

            async with room:
                return await call_with_retries(call, self.config.max_retries)

        try:
            results = await asyncio.gather(*(one(r) for r in rows), return_exceptions=True)
        finally:
            await client.close()
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, TeacherFailure):
                raise result
        return list(results)  # type: ignore[arg-type]

    def first_errors(self, rows: Sequence[dict[str, Any]]) -> list[int | TeacherFailure]:
        return asyncio.run(self._all(rows)) if rows else []


def read_verdicts(path: Path) -> dict[str, int]:
    """The verdicts a previous run appended (a torn last line is ignored)."""
    if not path.exists():
        return {}
    verdicts = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            verdicts[str(row["id"])] = int(row["judge_first_error"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return verdicts


def judge_rows(judge: StepJudge, rows: Sequence[dict[str, Any]], path: Path,
               chunk: int = 64) -> tuple[dict[str, int], int]:
    """The judge's first-error index per row id (asked only for rows not in ``path`` yet), and the failures."""
    verdicts = read_verdicts(path)
    todo = [r for r in rows if r["id"] not in verdicts]
    failed = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            for row, result in zip(part, judge.first_errors(part), strict=True):
                if isinstance(result, TeacherFailure):
                    failed += 1
                    continue
                verdicts[row["id"]] = result
                out.write(json.dumps({"id": row["id"], "judge_first_error": result}) + "\n")
            out.flush()
    return verdicts, failed


def agrees(row: dict[str, Any], judge_first_error: int) -> bool:
    """The judge and the Monte Carlo labels name the same first wrong step.

    With the first-error budget a row ends at its first failing step, so a judge naming a later step than the
    row has disagrees, like any other index.
    """
    return row["first_error"] == judge_first_error
