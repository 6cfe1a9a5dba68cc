"""The judge stage: score the samples curation marked (``needs_judge``) and keep those at the threshold."""


from typing import Any

from distilabel.steps import Step, StepInput
from distilabel.typing import StepOutput
from pydantic import Field

from pipelines.spec import JudgeConfig
from pipelines.steps.curate import NEEDS_JUDGE, problem_pass_rate
from pipelines.verifiers.judge import JudgeClient, Verdict, judge_messages


def apply_verdict(sample: dict[str, Any], verdict: Any, threshold: float, decides: bool) -> dict[str, Any]:
    """The sample after its verdict. ``decides``: the judge is the verification (``judge``, or ``undecided``
    mode), so its verdict is ``correct``; otherwise the rules already said correct and the judge can only veto."""
    if not isinstance(verdict, Verdict):  # the judge failed for good: the problem is asked again on a rerun
        return {**sample, "kept": False, "rejection_reason": "judge_error", "messages": None,
                "error": f"judge: {verdict}"}
    passed = verdict.score >= threshold
    sample = {**sample, "judge_score": verdict.score, "judge_reason": verdict.reason}
    if decides:
        sample["correct"] = passed
    if not passed:
        sample.update(kept=False, rejection_reason="judge", messages=None)
    return sample


def judge_samples(samples: list[dict[str, Any]], judge: JudgeConfig, verification: str,
                  api_key: str | None = None) -> None:
    """Judge, in place, the samples (each with its ``problem`` and ``gold``) that curation marked."""
    todo = [i for i, s in enumerate(samples) if s.get(NEEDS_JUDGE)]
    chats = [judge_messages(judge, samples[i]["problem"], samples[i]["answer"] or "",
                            None if verification == "code" else samples[i].get("gold"), samples[i].get("thought"))
             for i in todo]
    for i, verdict in zip(todo, JudgeClient(judge, api_key).judge(chats), strict=True):
        decides = verification == "judge" or samples[i].get("correct") is None
        samples[i] = apply_verdict(samples[i], verdict, judge.threshold, decides)


class JudgeTraces(Step):
    """Sends every marked sample of a batch to the judge (``judge.max_concurrency`` in flight)."""

    judge: JudgeConfig
    verification: str = "judge"
    api_key: str | None = Field(default=None, exclude=True, repr=False)

    @property
    def inputs(self) -> list[str]:
        return ["problem", "gold", "samples"]

    @property
    def outputs(self) -> list[str]:
        return ["samples", "pass_rate"]

    def process(self, inputs: StepInput) -> StepOutput:  # type: ignore[override]
        todo = [(row, i) for row in inputs for i, s in enumerate(row["samples"]) if s.get(NEEDS_JUDGE)]
        chats = [judge_messages(self.judge, row["problem"], row["samples"][i]["answer"] or "",
                                None if self.verification == "code" else row["gold"],
                                row["samples"][i].get("thought"))
                 for row, i in todo]
        verdicts = JudgeClient(self.judge, self.api_key).judge(chats)
        for (row, i), verdict in zip(todo, verdicts, strict=True):
            decides = self.verification == "judge" or row["samples"][i].get("correct") is None
            row["samples"][i] = apply_verdict(row["samples"][i], verdict, self.judge.threshold, decides)
        for row in inputs:
            row["pass_rate"] = problem_pass_rate(row["samples"])
        yield inputs
