"""Parse every sample into thought and answer, verify it against gold, and decide whether to keep it."""

from typing import Any

from distilabel.steps import Step, StepInput
from distilabel.typing import StepOutput

from pipelines.parse import normalise, parse_trace
from pipelines.prompt import build_messages
from pipelines.spec import PromptConfig, SimilarityConfig
from pipelines.verify import gold_answer, verify_answer


def curate_sample(sample: dict[str, Any], problem: str, gold: str | None, method: str,
                  prompt: PromptConfig, similarity: SimilarityConfig | None = None) -> dict[str, Any]:
    """The dataset fields of one sample: parsed, verified, kept or rejected with a reason."""
    record = {"completion": sample.get("text"), "reasoning_content": sample.get("reasoning"),
              "thought": None, "answer": None, "correct": None, "messages": None}
    if sample.get("error"):
        return {**record, "kept": False, "rejection_reason": "teacher_error"}
    parsed = parse_trace(sample.get("text"), sample.get("reasoning"))
    record.update(thought=parsed.thought, answer=parsed.answer)
    if sample.get("finish_reason") == "length":
        return {**record, "kept": False, "rejection_reason": "truncated"}
    if not parsed.ok:
        return {**record, "kept": False, "rejection_reason": parsed.rejection_reason}
    record["correct"] = verify_answer(parsed.answer, gold, method, problem=problem, similarity=similarity)
    if record["correct"] is False:
        return {**record, "kept": False, "rejection_reason": "incorrect"}
    assistant = {"role": "assistant", "content": normalise(parsed.thought, parsed.answer)}
    record["messages"] = build_messages(prompt, problem) + [assistant]
    return {**record, "kept": True, "rejection_reason": None}


class CurateTraces(Step):
    """Adds per-sample parse/verify fields to each sample and the problem's pass rate."""

    verification: str = "math"
    prompt: PromptConfig = PromptConfig()
    similarity: SimilarityConfig = SimilarityConfig()

    @property
    def inputs(self) -> list[str]:
        return ["problem", "gold", "samples"]

    @property
    def outputs(self) -> list[str]:
        return ["samples", "gold", "pass_rate"]

    def process(self, inputs: StepInput) -> StepOutput:  # type: ignore[override]
        for row in inputs:
            row["samples"] = [
                {**sample, **curate_sample(sample, row["problem"], row["gold"], self.verification, self.prompt,
                                           self.similarity)}
                for sample in row["samples"]
            ]
            row["gold"] = gold_answer(row["gold"])
            kept = [s["kept"] for s in row["samples"]]
            row["pass_rate"] = sum(kept) / len(kept) if kept else 0.0
        yield inputs
