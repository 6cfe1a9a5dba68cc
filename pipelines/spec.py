"""Dataset specs: one YAML file per dataset, validated by pydantic at load time."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SPECS_DIR = Path(__file__).parent / "specs"

DEFAULT_SYSTEM_PROMPT = (
    "You are a careful reasoner. First think step by step inside <thought>...</thought>, "
    "separating steps with blank lines. After </thought>, give only the final answer; "
    "for math put it in \\boxed{}."
)


class SpecError(ValueError):
    """A spec that cannot be used; the message is one line naming the field and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceConfig(_Strict):
    """Where problems come from: a Hub dataset id or a local .jsonl/.parquet file."""

    path: str
    config: str | None = None
    split: str = "train"
    problem_field: str = "problem"
    answer_field: str | None = "answer"
    id_field: str | None = None

    @property
    def is_local(self) -> bool:
        return self.path.endswith((".jsonl", ".json", ".parquet")) or Path(self.path).exists()


class PromptConfig(_Strict):
    system: str = DEFAULT_SYSTEM_PROMPT
    user_template: str = "{problem}"

    @field_validator("user_template")
    @classmethod
    def _has_problem(cls, value: str) -> str:
        if "{problem}" not in value:
            raise ValueError("must contain the placeholder {problem}")
        return value


class TeacherConfig(_Strict):
    backend: Literal["openai", "vllm", "transformers"] = "openai"
    model: str = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
    base_url: str | list[str] = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"
    num_samples: int = Field(1, ge=1, le=64)
    temperature: float = Field(0.6, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(8192, ge=1)
    top_logprobs: int | None = Field(None, ge=1, le=20)
    max_concurrency: int = Field(64, ge=1)
    timeout_s: float = Field(600.0, gt=0)
    max_retries: int = Field(4, ge=0)
    trust_remote_code: bool = False

    @field_validator("base_url")
    @classmethod
    def _urls(cls, value: str | list[str]) -> str | list[str]:
        for url in [value] if isinstance(value, str) else value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"not a URL: {url!r} (expected http://host:port/v1)")
        return value

    @property
    def base_urls(self) -> list[str]:
        return [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)


class OutputConfig(_Strict):
    dir: str | None = None
    rows_per_file: int = Field(50_000, ge=1)


class RunConfig(_Strict):
    batch_size: int = Field(64, ge=1)


class DatasetSpec(_Strict):
    name: str
    description: str = ""
    license: str | None = None
    source: SourceConfig
    prompt: PromptConfig = PromptConfig()
    teacher: TeacherConfig = TeacherConfig()
    verification: Literal["math", "exact", "none"] = "math"
    output: OutputConfig = OutputConfig()
    run: RunConfig = RunConfig()

    @model_validator(mode="after")
    def _gold_needed(self) -> DatasetSpec:
        if self.verification != "none" and not self.source.answer_field:
            raise ValueError(f"verification '{self.verification}' needs source.answer_field")
        return self


def _one_line(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "spec"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key (remove it or check its spelling)"
    elif first["type"] == "missing":
        msg = "missing (add it to the spec)"
    return f"{where}: {msg}"


def load_spec(name_or_path: str) -> tuple[DatasetSpec, str]:
    """Load a shipped spec by name or a YAML file by path; returns the spec and its verbatim text."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = SPECS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in SPECS_DIR.glob("*.yaml")))
        raise SpecError(f"spec {name_or_path!r} not found: give a YAML path or one of: {shipped}")
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not UTF-8 text; save the spec as UTF-8") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a spec is a YAML mapping with keys name, source, teacher, ...")
    try:
        spec = DatasetSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{path}: {_one_line(exc)}") from None
    if spec.source.is_local and not Path(spec.source.path).is_absolute():
        candidate = (path.parent / spec.source.path).resolve()
        if candidate.exists():
            spec.source.path = str(candidate)
    return spec, text


def shipped_specs() -> list[Path]:
    return sorted(SPECS_DIR.glob("*.yaml"))
