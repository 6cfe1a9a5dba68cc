"""What ``distill prm-label`` does: how many completions a step, which steps, how steps are split."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


class LabelConfig(BaseModel):
    """The labelling budget and rules (the teacher, prompt and verification come from the dataset's spec)."""

    model_config = ConfigDict(extra="forbid")

    completions: int = Field(8, ge=1, le=64)  # N runs from each step prefix (Math-Shepherd used 8)
    # first-error: label step k+1 only while steps 0..k reach the gold (the row ends at its first failing step);
    # all: every step up to max_steps, in one round
    until: Literal["first-error", "all"] = "first-error"
    max_steps: int = Field(16, ge=1)  # per trace: later steps are not labelled (nor exported)
    split: Literal["auto", "blank_lines", "step_markers", "lines", "regex"] = "auto"
    split_pattern: str | None = Field(None, validate_default=True)
    temperature: float | None = Field(None, ge=0.0, le=2.0)  # default: the spec's teacher.temperature
    max_new_tokens: int | None = Field(None, ge=1)  # default: the spec's teacher.max_new_tokens
    limit: int | None = Field(None, ge=1)  # only the first N labellable traces
    consensus: bool = False  # keep only the traces whose first error the judge (the spec's judge:) agrees with

    @field_validator("split_pattern")
    @classmethod
    def _pattern(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("split") == "regex" and not value:
            raise ValueError("split regex needs a pattern (a step ends after each match)")
        return value
