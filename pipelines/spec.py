"""Dataset specs: one YAML file per dataset, validated by pydantic at load time."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from prm.config import PrmConfig, SpecError, Strict, Url, check_url  # noqa: F401  (re-exported)

SPECS_DIR = Path(__file__).parent / "specs"

DEFAULT_SYSTEM_PROMPT = (
    "You are a careful reasoner. First think step by step inside <thought>...</thought>, "
    "separating steps with blank lines. After </thought>, give only the final answer; "
    "for math put it in \\boxed{}."
)




class SourceConfig(Strict):
    """Where problems come from: a Hub dataset id or a local .jsonl/.parquet file."""

    path: str
    config: str | None = None
    split: str = "train"
    problem_field: str = "problem"
    answer_field: str | None = "answer"
    id_field: str | None = None
    # verification code: HumanEval's entry_point column; "check(<entry point>)" is appended to the test program
    entry_point_field: str | None = None
    # multiple choice with the options in their own column (ARC's {"text": [...], "label": [...]}, or a list):
    # they are appended to the problem as "(A) text" lines; numeric labels (1-5) become letters, in the gold too
    choices_field: str | None = None
    # verification code: show the first N lines of the test program in the problem (MBPP's prompt shows its
    # asserts, the only place the function's name is given)
    show_tests: int = Field(0, ge=0)
    # The start of the assistant's reply, which the teacher continues instead of answering afresh (the step
    # prefixes of `distill prm-label`); the sample's completion is this text followed by the continuation.
    prefix_field: str | None = None
    max_problem_chars: int = Field(100_000, ge=1)  # a longer problem is a data error, not a prompt

    @property
    def is_local(self) -> bool:
        return self.path.endswith((".jsonl", ".json", ".parquet")) or Path(self.path).exists()


class PromptConfig(Strict):
    system: str = DEFAULT_SYSTEM_PROMPT
    user_template: str = "{problem}"

    @field_validator("user_template")
    @classmethod
    def _has_problem(cls, value: str) -> str:
        if "{problem}" not in value:
            raise ValueError("must contain the placeholder {problem}")
        return value


class TeacherConfig(Strict):
    backend: Literal["openai", "vllm", "transformers"] = "openai"
    model: str = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
    base_url: str | list[str] = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"
    num_samples: int = Field(1, ge=1, le=64)
    temperature: float = Field(0.6, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(8192, ge=1)
    # k+1 are asked of vLLM (its --max-logprobs defaults to 20) so that the sampled token never takes a top-k place
    top_logprobs: int | None = Field(None, ge=1, le=19)
    # backend transformers: each batch's sampling seed derives from this and its prompts, so a rerun samples the
    # same; None: unseeded
    seed: int | None = None
    max_concurrency: int = Field(64, ge=1)
    timeout_s: float = Field(600.0, gt=0)
    max_retries: int = Field(4, ge=0)
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _seed_needs_a_server(self) -> TeacherConfig:
        if self.seed is not None and self.backend != "transformers":
            # vLLM's CPU build crashes on a seeded request whose sampled token it discards (chunked prefill,
            # preemption: "CPU Generator does not use offset"); a vLLM server is seeded at start (distill serve
            # --seed), per request only in-process
            raise ValueError("seed: only the transformers backend takes a per-request seed; seed a vLLM server "
                             "with `distill serve --seed`")
        return self

    @field_validator("base_url")
    @classmethod
    def _urls(cls, value: str | list[str]) -> str | list[str]:
        for url in [value] if isinstance(value, str) else value:
            check_url(url)
        return value

    @property
    def base_urls(self) -> list[str]:
        return [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)


class OutputConfig(Strict):
    dir: str | None = None  # relative to the working directory and inside it; --out may point anywhere
    rows_per_file: int = Field(50_000, ge=1)

    @field_validator("dir")
    @classmethod
    def _inside(cls, value: str | None) -> str | None:
        if value is not None and (Path(value).is_absolute() or ".." in Path(value).parts):
            raise ValueError(f"{value!r} must be a relative path inside the working directory (or use --out)")
        return value


STEP_NAMES = ("generate", "curate", "judge", "prm", "write")


class StepConfig(Strict):
    """How many copies of a stage run and, on Ray, what each copy (an actor) reserves on a node."""

    replicas: int | None = Field(None, ge=1)  # default 1 (generate: run.generate_replicas)
    cpus: float | None = Field(None, gt=0, le=512)  # Ray only; fractions let small stages share a core
    gpus: int | None = Field(None, ge=0, le=64)  # Ray: the actor is placed on a node with that many free GPUs


class StepsConfig(Strict):
    generate: StepConfig = StepConfig()
    curate: StepConfig = StepConfig()
    judge: StepConfig = StepConfig()
    prm: StepConfig = StepConfig()
    write: StepConfig = StepConfig()


class RunConfig(Strict):
    batch_size: int = Field(64, ge=1)
    # How generation feeds an HTTP teacher: "window" keeps teacher.max_concurrency requests in flight per
    # endpoint across batches; "batch" sends a batch and waits for all of it (Distilabel's way; comparison).
    dispatch: Literal["window", "batch"] = "window"
    generate_replicas: int = Field(1, ge=1)  # copies of the generation step (= steps.generate.replicas)
    # local: one machine, distilabel's process pool; ray: every stage copy is a Ray actor (docs/scaling.md)
    engine: Literal["local", "ray"] = "local"
    # ray: the cluster to join ("auto", "ray://head:10001", "head:6379"); none starts a Ray on this machine
    ray_address: str | None = None
    steps: StepsConfig = StepsConfig()

    @model_validator(mode="after")
    def _replicas(self) -> RunConfig:
        given = self.steps.generate.replicas
        if given is not None and self.generate_replicas not in (1, given):
            raise ValueError(f"generate_replicas ({self.generate_replicas}) and steps.generate.replicas ({given}) "
                             "disagree; give only steps.generate.replicas")
        if self.replicas("generate") > 1 and self.dispatch == "window" and self.engine == "local":
            raise ValueError("generate_replicas > 1 needs dispatch: batch or engine: ray (on one machine one "
                             "window already fills the teacher)")
        if self.engine == "local":
            for name in STEP_NAMES:
                step = getattr(self.steps, name)
                if step.cpus is not None:
                    raise ValueError(f"steps.{name}.cpus: only with engine: ray (the local engine does not "
                                     "reserve CPUs)")
        if self.ray_address is not None and self.engine != "ray":
            raise ValueError("ray_address: only with engine: ray")
        return self

    def replicas(self, step: str) -> int:
        if step == "generate":
            return self.steps.generate.replicas or self.generate_replicas
        return getattr(self.steps, step).replicas or 1


class DedupeConfig(Strict):
    """Exact and MinHash-LSH near-duplicate removal of problems before generation (on by default)."""

    enabled: bool = True
    near_threshold: float = Field(0.85, gt=0.0, le=1.0)
    num_perm: int = Field(128, ge=16, le=1024)
    shingle_size: int = Field(3, ge=1, le=16)


class BenchmarkConfig(Strict):
    """An evaluation set to decontaminate against: a Hub dataset id or a local .jsonl/.parquet file."""

    path: str
    name: str | None = None
    config: str | None = None
    split: str = "test"
    field: str = "problem"

    @property
    def label(self) -> str:
        return self.name or (Path(self.path).stem if self.is_local else self.path)

    @property
    def is_local(self) -> bool:
        return self.path.endswith((".jsonl", ".json", ".parquet")) or Path(self.path).exists()


class DecontaminationConfig(Strict):
    """Drop problems whose word n-grams overlap a benchmark problem's (docs/decontamination.md).

    open-r1 drops a problem sharing any 8-gram (``ngram: 8, max_df: null, min_overlap: 0``); here stock phrases
    (n-grams in more than ``max_df`` of the benchmark's problems) never count, and a problem must share
    ``min_overlap`` of the informative n-grams of the smaller of the two texts, or ``min_shared`` of them. The
    defaults are the measured best of ``bench/decontamination.py`` (precision 0.86-0.94 where open-r1's rule has
    0.04, at the same recall).
    """

    benchmarks: list[BenchmarkConfig] = []
    ngram: int = Field(5, ge=1, le=64)  # 5, not open-r1's 8: with the two rules below it keeps the recall
    max_df: float | None = Field(0.005, gt=0.0, le=1.0)
    min_overlap: float = Field(0.3, ge=0.0, le=1.0)
    min_shared: int | None = Field(None, ge=1)


class SimilarityConfig(Strict):
    """``verification: similarity``: an answer is right when it is close enough to the reference text."""

    metric: Literal["chrf", "wer"] = "chrf"
    threshold: float = Field(0.6, ge=0.0, le=1.0)  # chrf: chrF/100 at least this; wer: WER at most this


class CodeConfig(Strict):
    """``verification: code``: the sandbox limits for running an answer's code against the tests."""

    timeout_s: float = Field(10.0, gt=0, le=600)  # wall clock per answer
    cpu_s: int = Field(5, ge=1, le=600)
    memory_mb: int = Field(1024, ge=64)  # address space (RLIMIT_AS)
    file_mb: int = Field(16, ge=1)  # largest file (and output) it may write
    processes: int = Field(32, ge=1)  # RLIMIT_NPROC of the sandbox user
    isolation: Literal["auto", "namespaces", "fallback"] = "auto"  # namespaces: fail when unavailable
    guard: bool = True  # the Python audit-hook guard on top of the OS limits
    workers: int = Field(4, ge=1, le=64)  # sandboxes run at once


class JudgeConfig(Strict):
    """An LLM judge on a second OpenAI-compatible endpoint, scoring answers 0-10 against a rubric."""

    base_url: Url = "http://127.0.0.1:8001/v1"
    model: str
    rubric: str
    threshold: float = Field(0.7, ge=0.0, le=1.0)  # on the score / 10
    # always: every parsed answer (with a rule-based verification both must pass); undecided: only where the
    # rule-based check could not decide (no parsable answer, no option picked)
    mode: Literal["always", "undecided"] = "always"
    api_key_env: str = "JUDGE_API_KEY"
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_new_tokens: int = Field(512, ge=16)
    include_thought: bool = False  # also show the judge the reasoning, not only the final answer
    max_concurrency: int = Field(16, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(4, ge=0)

    @field_validator("rubric")
    @classmethod
    def _rubric(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("empty: say what a good answer is")
        return value


class DatasetSpec(Strict):
    name: str
    description: str = ""
    license: str | None = None
    source: SourceConfig
    prompt: PromptConfig = PromptConfig()
    teacher: TeacherConfig = TeacherConfig()
    verification: Literal["math", "exact", "choice", "similarity", "code", "judge", "none"] = "math"
    similarity: SimilarityConfig = SimilarityConfig()
    code: CodeConfig = CodeConfig()
    judge: JudgeConfig | None = None
    output: OutputConfig = OutputConfig()
    run: RunConfig = RunConfig()
    prm: PrmConfig | None = None
    dedupe: DedupeConfig = DedupeConfig()
    decontamination: DecontaminationConfig = DecontaminationConfig()

    @field_validator("name")
    @classmethod
    def _folder_name(cls, value: str) -> str:
        # The name becomes folder names (out/<name>, distilabel's cache): no "/", no "..", no hidden names.
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError(f"{value!r}: use letters, digits, '.', '_' and '-' only (it names the output folder)")
        return value

    @model_validator(mode="after")
    def _gold_needed(self) -> DatasetSpec:
        if self.verification not in ("none", "judge") and not self.source.answer_field:
            raise ValueError(f"verification '{self.verification}' needs source.answer_field")
        if self.verification == "judge" and self.judge is None:
            raise ValueError("verification 'judge' needs a judge: section (base_url, model, rubric)")
        if self.verification == "none" and self.judge is not None and self.judge.mode == "undecided":
            raise ValueError("judge.mode 'undecided' needs a rule-based verification (math, choice, ...)")
        return self


def _one_line(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "spec"
    msg = first["msg"].removeprefix("Value error, ")
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
    for benchmark in spec.decontamination.benchmarks:
        if benchmark.is_local and not Path(benchmark.path).is_absolute():
            candidate = (path.parent / benchmark.path).resolve()
            if candidate.exists():
                benchmark.path = str(candidate)
    return spec, text


def dump_spec(spec: DatasetSpec) -> str:
    """The effective spec as YAML: every field as validated, CLI overrides and defaults included, so that
    ``__meta__/spec.yaml`` says what the run used and loads back to the same spec. A spec holds no secret to
    leak: keys are only named (``api_key_env``), never given."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False, allow_unicode=True, width=100)


def parse_sets(pairs: list[str]) -> dict[str, object]:
    """``--set a.b=VALUE`` pairs (values in YAML) as ``{"a.b": value}``."""
    overrides: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SpecError(f"--set: {pair!r} is not KEY=VALUE, e.g. rounds=3 or students.max_steps=50")
        overrides[key] = yaml.safe_load(value)
    return overrides


def apply_sets(data: dict, overrides: dict[str, object]) -> dict:
    """Dotted overrides (``{"students.max_steps": 50}``) written into a config mapping, in place."""
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return data


def shipped_specs() -> list[Path]:
    return sorted(SPECS_DIR.glob("*.yaml"))
