"""Ask the teacher for ``num_samples`` completions a problem; all samples of a problem stay in one row."""

from typing import Any

from distilabel.steps import StepInput
from distilabel.steps.tasks import Task
from distilabel.typing import StepOutput

from pipelines.prompt import build_messages
from pipelines.spec import PromptConfig


def samples_from_output(output: dict[str, Any], n: int, max_new_tokens: int) -> list[dict[str, Any]]:
    """Normalise an LLM output (ours or a distilabel in-process engine's) to a list of samples."""
    if "samples" in output:
        return output["samples"]
    generations = output.get("generations") or []
    stats = output.get("statistics") or {}
    out_tokens = stats.get("output_tokens") or [None] * len(generations)
    in_tokens = (stats.get("input_tokens") or [None])[0]
    samples = []
    for text, tokens in zip(generations, out_tokens):
        truncated = tokens is not None and tokens >= max_new_tokens
        samples.append({"text": text, "reasoning": None, "finish_reason": "length" if truncated else "stop",
                        "completion_tokens": tokens, "prompt_tokens": in_tokens,
                        "error": None if text is not None else "no generation"})
    return samples + [{"text": None, "error": "missing generation"} for _ in range(n - len(samples))]


class TeacherGeneration(Task):
    """Teacher generation: chat messages from the prompt config, ``samples`` out."""

    prompt: PromptConfig = PromptConfig()
    num_samples: int = 1
    max_new_tokens: int = 1024

    @property
    def inputs(self) -> list[str]:
        return ["problem"]

    @property
    def outputs(self) -> list[str]:
        return ["samples", "model_name"]

    def format_input(self, input: dict[str, Any]) -> list[dict[str, str]]:  # noqa: A002
        return build_messages(self.prompt, input["problem"])

    def format_output(self, output: str | None, input: dict[str, Any] | None = None) -> dict[str, Any]:
        return {}

    def process(self, inputs: StepInput) -> StepOutput:  # type: ignore[override]
        messages = [self.format_input(row) for row in inputs]
        outputs = self.llm.generate_outputs(inputs=messages, num_generations=self.num_samples,
                                            **self.llm.get_generation_kwargs())
        for row, output in zip(inputs, outputs):
            row["samples"] = samples_from_output(output, self.num_samples, self.max_new_tokens)
            row["model_name"] = self.llm.model_name
        yield inputs
