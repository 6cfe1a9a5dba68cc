"""Parse every sample into thought and answer, verify it against gold, and decide whether to keep it."""

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from distilabel.steps import Step, StepInput
from distilabel.typing import StepOutput

from pipelines.spec import CodeConfig, PromptConfig, SimilarityConfig
from pipelines.trace.parse import normalise, parse_trace
from pipelines.trace.prompt import build_messages
from pipelines.verifiers.verify import decide_answer, gold_answer, similarity_score

NEEDS_JUDGE = "needs_judge"  # an internal sample field for the judge step (never written)


def curate_sample(sample: dict[str, Any], problem: str, gold: str | None, method: str,
                  prompt: PromptConfig, similarity: SimilarityConfig | None = None,
                  code: CodeConfig | None = None, judge_mode: str | None = None) -> dict[str, Any]:
    """The dataset fields of one sample: parsed, verified, kept or rejected with a reason.

    ``judge_mode`` (the spec's ``judge.mode``, None without a judge) marks the samples the judge step scores:
    all parsed ones (``always``, or ``verification: judge``) or those the rules could not decide (``undecided``).
    """
    record = {"completion": sample.get("text"), "reasoning_content": sample.get("reasoning"),
              "thought": None, "answer": None, "correct": None, "messages": None, NEEDS_JUDGE: False}
    if sample.get("error"):
        return {**record, "kept": False, "rejection_reason": "teacher_error"}
    parsed = parse_trace(sample.get("text"), sample.get("reasoning"))
    record.update(thought=parsed.thought, answer=parsed.answer)
    if sample.get("finish_reason") == "length":
        return {**record, "kept": False, "rejection_reason": "truncated"}
    if not parsed.ok:
        return {**record, "kept": False, "rejection_reason": parsed.rejection_reason}
    if method == "similarity":
        record["similarity_score"] = similarity_score(parsed.answer, gold, similarity)
    decided = decide_answer(parsed.answer, gold, method, problem=problem, similarity=similarity, code=code)
    undecided = decided is None and method not in ("none", "judge")
    if undecided and judge_mode != "undecided" and method != "judge":
        decided = False  # nothing can decide it: as before the judge, an unreadable answer is wrong
    record["correct"] = decided
    if decided is False:
        return {**record, "kept": False, "rejection_reason": "incorrect"}
    record[NEEDS_JUDGE] = method == "judge" or (judge_mode == "always") or (undecided and judge_mode == "undecided")
    assistant = {"role": "assistant", "content": normalise(parsed.thought, parsed.answer)}
    record["messages"] = build_messages(prompt, problem) + [assistant]
    return {**record, "kept": True, "rejection_reason": None}


def problem_pass_rate(samples: list[dict[str, Any]]) -> float:
    kept = [s["kept"] for s in samples]
    return sum(kept) / len(kept) if kept else 0.0


class CurateTraces(Step):
    """Adds per-sample parse/verify fields to each sample and the problem's pass rate."""

    verification: str = "math"
    prompt: PromptConfig = PromptConfig()
    similarity: SimilarityConfig = SimilarityConfig()
    code: CodeConfig = CodeConfig()
    judge_mode: str | None = None

    @property
    def inputs(self) -> list[str]:
        return ["problem", "gold", "samples"]

    @property
    def outputs(self) -> list[str]:
        return ["samples", "gold", "pass_rate"]

    def process(self, inputs: StepInput) -> StepOutput:  # type: ignore[override]
        jobs = [(row, sample) for row in inputs for sample in row["samples"]]

        def curate(job: tuple[dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
            row, sample = job
            return {**sample, **curate_sample(sample, row["problem"], row["gold"], self.verification, self.prompt,
                                              self.similarity, self.code, self.judge_mode)}

        # Code answers run in sandboxes, in parallel; math-verify's timeouts need the main thread, so the rest don't.
        if self.verification == "code" and len(jobs) > 1:
            with ThreadPoolExecutor(max_workers=self.code.workers) as pool:
                curated = iter(list(pool.map(curate, jobs)))
        else:
            curated = iter([curate(job) for job in jobs])
        for row in inputs:
            row["samples"] = [next(curated) for _ in row["samples"]]
            if self.verification != "code":  # a test program is kept whole
                row["gold"] = gold_answer(row["gold"])
            row["pass_rate"] = problem_pass_rate(row["samples"])
        yield inputs
