"""The PRM's configuration, and the configuration primitives every floor above shares.

``prm/`` is the bottom floor, so the one ``SpecError`` (a bad input: one line naming the field and the fix), the
strict pydantic base and the URL type live here; ``pipelines.spec`` re-exports them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


class SpecError(ValueError):
    """A spec or input that cannot be used; the message is one line naming the field and the fix."""


class Strict(BaseModel):
    """A configuration section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


def check_url(value: str, expected: str = "http://host:port/v1") -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"not a URL: {value!r} (expected {expected})")
    return value


# An OpenAI-compatible endpoint (teacher, judge, eval model), and a bare server (a vLLM pooling PRM).
Url = Annotated[str, AfterValidator(check_url)]
ServerUrl = Annotated[str, AfterValidator(lambda value: check_url(value, "http://host:port"))]


class PrmConfig(Strict):
    """The process reward model that scores each step of a kept thought (issue 3; see prm/)."""

    model: str
    # stepwise: a token classifier trained by Axolotl (`distill config prm`; prm/encode.py reads it as Axolotl wrote it)
    style: Literal["math-shepherd", "qwen-prm", "stepwise"] = "math-shepherd"
    backend: Literal["transformers", "vllm"] = "transformers"
    base_url: ServerUrl = "http://127.0.0.1:8001"  # vllm: a pooling server (prm.backend_vllm.server_args)
    served_model: str | None = None  # vllm: the served model name (default: model)
    tokenizer: str | None = None  # default: model
    aggregation: Literal["min", "mean", "last", "product"] = "min"
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    split: Literal["auto", "blank_lines", "step_markers", "lines", "regex"] = "auto"
    split_pattern: str | None = None  # split == "regex": a step ends after each match
    # default: " ки" (math-shepherd), "<extra_0>" (qwen-prm), "\n" (stepwise: the training config's step_separator)
    step_tag: str | None = None
    good_token: str = "+"
    bad_token: str = "-"
    system: str = "Please reason step by step, and put your final answer within \\boxed{}."  # qwen-prm
    batch_size: int = Field(16, ge=1)  # traces per forward pass (or per HTTP request)
    max_batch_tokens: int = Field(65536, ge=1)  # padded tokens per forward pass
    max_tokens: int = Field(4096, ge=8)  # longer traces are left unscored (kept as they are)
    device: str = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    trust_remote_code: bool = False
    score_rejected: bool = False  # also score the thoughts of samples rejected for other reasons
    server_probs: bool = True  # vllm: the pooler already applied softmax (vLLM's default for reward models)
    max_concurrency: int = Field(4, ge=1)
    timeout_s: float = Field(600.0, gt=0)

    @model_validator(mode="after")
    def _pattern(self) -> PrmConfig:
        import re

        if self.split == "regex" and not self.split_pattern:
            raise ValueError("split 'regex' needs split_pattern (a regex that ends a step)")
        if self.split_pattern:
            try:
                re.compile(self.split_pattern)
            except re.error as exc:
                raise ValueError(f"split_pattern: invalid regex ({exc})") from None
        return self

    @property
    def tag(self) -> str:
        if self.step_tag:
            return self.step_tag
        return {"math-shepherd": " ки", "qwen-prm": "<extra_0>"}.get(self.style, "\n")
