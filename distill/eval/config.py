"""What `distill eval` runs: models, sets, the sampling protocol, leakage and OOD inputs (pydantic, from YAML or flags).

A model is one of
- ``url``: an OpenAI-compatible server that already runs (vLLM, ``distill serve``); the served name is read
  from its ``/v1/models`` when it serves one model, else give ``served_model``;
- ``path``: a local model folder (or Hub id) that the eval starts with the factory's ``distill serve`` machinery
  (``backend: serve``, one vLLM server at a time, stopped when that model is done), or runs in-process
  (``backend: transformers``, or ``vllm`` where vLLM is importable).

On the command line: ``--model NAME=TARGET[,key=value…]`` where TARGET is a URL or a path and the keys are the
model's fields (``backend``, ``served_model``, ``reasoning_parser``, ``dtype``, ``max_model_len``, …).
"""

from __future__ import annotations

import re
from hashlib import sha1
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from pipelines.spec import SpecError, Strict, Url, _one_line


class ModelConfig(Strict):
    name: str  # a column of the report and a folder name
    url: Url | None = None
    path: str | None = None
    backend: Literal["serve", "transformers", "vllm"] = "serve"  # for a path
    served_model: str | None = None  # for a url: the model name the server answers to
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = Field(64, ge=1)  # requests in flight (the server's --max-num-seqs)
    batch_size: int | None = Field(None, ge=1)  # problems per batch (default 64 over HTTP, 8 in-process)
    # backend serve: what `distill serve` passes to vLLM
    reasoning_parser: str | None = None
    dtype: str | None = None  # default float32 without a GPU, else auto
    max_model_len: int | None = Field(None, ge=16)
    max_num_seqs: int | None = Field(None, ge=1)
    serve_args: list[str] = []
    trust_remote_code: bool = False

    @field_validator("name")
    @classmethod
    def _folder_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError(f"{value!r}: use letters, digits, '.', '_' and '-' only (it names a folder)")
        return value

    @model_validator(mode="after")
    def _one_target(self) -> ModelConfig:
        if (self.url is None) == (self.path is None):
            raise ValueError("give exactly one of url (a running server) or path (a model folder or Hub id)")
        return self

    @property
    def served(self) -> bool:
        """Whether requests go over HTTP (a given URL, or a server the eval starts)."""
        return self.url is not None or self.backend == "serve"


class EvalConfig(Strict):
    sets: list[str] = Field(min_length=1)
    models: list[ModelConfig] = Field(min_length=1)
    out: Path = Path("out/eval")
    samples: int | None = Field(None, ge=1, le=1024)  # k; default: each set's own
    temperature: float | None = Field(None, ge=0.0, le=2.0)  # default: the set's (0.6)
    top_p: float | None = Field(None, gt=0.0, le=1.0)  # default: the set's (0.95)
    seed: int | None = 0  # in-process (transformers) models: the sampling seed (served: distill serve --seed)
    max_new_tokens: int | None = Field(None, ge=1)  # default: the set's
    limit: int | None = Field(None, ge=1)  # the first N problems of each set
    offline: bool = False  # use each set's shipped local copy instead of the Hub
    logprobs: Literal["auto", "on", "off"] = "auto"  # auto: for served models (vLLM returns them cheaply)
    train: list[Path] = []  # dataset folders the models were trained on: leakage and OOD
    ngram: int = Field(8, ge=1, le=64)  # leakage: shared word n-grams (open-r1's decontamination uses 8)
    teacher_traces: str | None = None  # a dataset folder, or the name of a model of this eval
    bins: int = Field(10, ge=2, le=100)  # reliability diagram

    @model_validator(mode="after")
    def _unique_names(self) -> EvalConfig:
        names = [m.name for m in self.models]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"model name {repeated[0]!r} is given twice; name each model (NAME=TARGET)")
        return self


def parse_model_flag(text: str) -> dict[str, Any]:
    """``NAME=TARGET[,key=value…]`` (or a bare TARGET, named after it) as ModelConfig fields."""
    head, *options = [part.strip() for part in text.split(",")]
    name, sep, target = head.partition("=")
    if not sep or name.startswith(("http:", "https:")) or "/" in name:
        target, name = head, ""
    fields: dict[str, Any] = {"url" if target.startswith(("http://", "https://")) else "path": target}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise SpecError(f"--model {text!r}: {option!r} is not key=value (e.g. backend=transformers)")
        key = key.strip().replace("-", "_")
        fields[key] = value.strip() if key != "serve_args" else value.split()
    if not name:
        name = Path(target.rstrip("/")).name if "path" in fields else (fields.get("served_model") or "")
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model-" + sha1(target.encode()).hexdigest()[:6]
    return {"name": name, **fields}


FLAG_NAMES = {"max_new_tokens": "--max-new-tokens", "teacher_traces": "--teacher-traces", "samples": "--samples",
              "sets": "--set", "models": "--model", "top_p": "--top-p"}


def validate(data: dict[str, Any], from_cli: set[str] = frozenset(), config_path: Path | None = None) -> EvalConfig:
    """An EvalConfig, or one SpecError line naming the field: as a flag when it came from the command line, as
    ``FILE: field`` when it came from the YAML."""
    try:
        return EvalConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"]]
        if config_path is not None and (not loc or loc[0] not in from_cli):
            raise SpecError(f"{config_path}: {_one_line(exc)}") from None
        flag = FLAG_NAMES.get(loc[0], f"--{loc[0].replace('_', '-')}") if loc else "eval"
        if loc and loc[0] == "models" and len(loc) > 2:
            flag = f"--model {data['models'][int(loc[1])].get('name')}: {'.'.join(loc[2:])}"
        message = _one_line(exc).split(": ", 1)[-1]
        if first["type"] in ("greater_than_equal", "greater_than"):
            bound = (first.get("ctx") or {}).get("ge", (first.get("ctx") or {}).get("gt"))
            relation = "at least" if first["type"] == "greater_than_equal" else "above"
            message = f"must be {relation} {bound}, got {first['input']!r}"
        raise SpecError(f"{flag}: {message}") from None


def load_config(path: Path) -> dict[str, Any]:
    """The mapping of an eval YAML (validated once the flags are merged in)."""
    if not path.is_file():
        raise SpecError(f"--config: {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: an eval config is a mapping with keys sets, models, …")
    return data
