"""The lab loop's settings: one pydantic model, loaded from YAML (``lab/configs/*.yaml``), CLI flags on top."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from pipelines.spec import SpecError, Strict, apply_sets

CONFIGS_DIR = Path(__file__).parent / "configs"


class TeacherRecipe(Strict):
    """`distill lab teacher`: a tiny Qwen2 trained from scratch on CPU."""

    task: Literal["addition", "dictation"] = "addition"
    levels: list[int] = [2]
    steps: int = Field(600, ge=1)
    corrupt: float = Field(0.0, ge=0.0, lt=1.0)  # share of training examples with one wrong step
    seed: int = 0
    dir: str | None = None  # where the teacher lives (default <out>/teacher); reused when its recipe matches


class Generation(Strict):
    """`distill run` against the served teacher: n samples of the train problems."""

    problems: int = Field(200, ge=1)
    num_samples: int = Field(4, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_logprobs: int = Field(5, ge=1, le=19)
    max_new_tokens: int = Field(96, ge=8)


class Variant(Strict):
    """One student recipe: its method and data; every variant starts from the same random init per seed."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    method: Literal["sft", "kd"] = "sft"
    # unfiltered: every well-formed trace, wrong ones too; prm: the verified traces the lab's trained PRM passes;
    # random: a seeded random subset of the verified traces of the PRM-passed set's size (the PRM's control);
    # answer_only: the verified traces with the thought stripped; shortest: the shortest verified trace per problem
    # (`distill select`); both derived from the verified traces by lab/budget.py
    data: Literal["filtered", "unfiltered", "prm", "random", "answer_only", "shortest"] = "filtered"
    curriculum: bool = False  # two stages (short traces of easy problems first), the same total steps
    kd_beta: float = Field(0.0, ge=0.0, le=1.0)  # 0 forward KL(teacher || student), 1 reverse, between: JSD(beta)
    # method kd: topk_tail, the factory's plugin (the teacher's top k plus a tail bucket); axolotl_legacy,
    # Axolotl's own forward KL renormalised over the top k (`kd_normalize_topk: true`): the KD the lab measured
    # before the plugin, kept to reproduce that gap (`distill config kd --loss axolotl_legacy`)
    loss: Literal["topk_tail", "axolotl_legacy"] = "topk_tail"
    # method kd: the k of the teacher's targets (the export's scoring pass; vLLM answers at most 20);
    # default generation.top_logprobs
    top_k: int | None = Field(None, ge=1, le=20)
    kd_alpha: float | None = Field(None, ge=0.0, le=1.0)  # method kd: default students.kd_alpha
    qat: bool = False  # quantization-aware training (`distill config --qat`): QAD with method kd

    @model_validator(mode="after")
    def _kd_keys(self) -> Variant:
        if self.method != "kd":
            for key, default in (("loss", "topk_tail"), ("top_k", None), ("kd_alpha", None), ("kd_beta", 0.0)):
                if getattr(self, key) != default:
                    raise ValueError(f"{key}: {getattr(self, key)!r} is a KD setting; variant {self.name!r} has "
                                     "method sft")
        if self.loss == "axolotl_legacy" and self.kd_beta != 0:
            raise ValueError(f"kd_beta: {self.kd_beta} with loss axolotl_legacy; Axolotl's truncated reverse KL / "
                             "JSD is not a divergence: reproduce only its forward KL (kd_beta 0)")
        if self.method == "kd" and self.data == "answer_only":
            # measured (docs/lab.md, thought budget): on a stripped turn a thinking teacher's top 1 is `<thought>`
            raise ValueError("data: answer_only with method kd: the thinking teacher's targets on a turn without its "
                             "thought are for a thought (its top 1 is `<thought>`); use method: sft")
        return self


class StudentTraining(Strict):
    """The students: one random init of a smaller shape per seed, the same steps for every variant; Axolotl
    trains them."""

    shape: dict[str, int] = {}  # over lab.teacher.STUDENT_SHAPE
    max_steps: int = Field(1000, ge=2)
    micro_batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(3e-3, gt=0)
    kd_alpha: float = Field(0.9, ge=0.0, le=1.0)  # KD loss weight; the cross-entropy gets 1 - kd_alpha
    variants: list[Variant] = [Variant(name="sft", method="sft"), Variant(name="kd", method="kd")]
    seeds: list[int] = [0]  # each seed: the student init and Axolotl's data order
    # the variant every other one is compared with, per seed (paired differences, lab/compare.py); when it is
    # not a variant (and not set), there is no paired comparison
    baseline: str = "sft"
    random_subset_seed: int = 0  # data: random draws its subset with this seed (one subset for every seed)

    @model_validator(mode="after")
    def _unique(self) -> StudentTraining:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique: {names}")
        return self


class Evaluation(Strict):
    problems: int = Field(100, ge=1)
    num_samples: int = Field(4, ge=1)
    temperature: float = Field(0.6, ge=0.0, le=2.0)
    levels: list[int] | None = None  # default: the teacher's
    # problems per generate() call of an in-process student (`distill eval`'s batch_size; None: its default, 8):
    # a tiny model on CPU is per-step overhead bound, so larger batches are several times faster
    batch_size: int | None = Field(None, ge=1)


class Diagnostic(Strict):
    """Teacher-forced on the teacher's traces of held-out problems (generated once, `distill run` + a KD export
    scored by the teacher): each student's probability mass on the teacher's top-k ids at every assistant
    position, and its mass on digit tokens outside them (lab/diagnostic.py)."""

    problems: int = Field(100, ge=1)  # the first n held-out problems (evaluation.problems or fewer)
    num_samples: int = Field(1, ge=1)  # teacher traces per problem, at generation.temperature
    top_k: int = Field(5, ge=1, le=20)


class Arm(Strict):
    lmbda: float = Field(ge=0.0, le=1.0)  # the on-policy share of a round's rows
    # the KD loss weight; cross-entropy on the row's tokens gets the rest (`distill onpolicy` refuses it when
    # lmbda > 0: no cross-entropy on the student's own samples)
    kd_alpha: float = Field(1.0, ge=0.0, le=1.0)
    kd_beta: float | None = Field(None, ge=0.0, le=1.0)  # default: the recipe's kd_beta
    reverse_kl: Literal["topk_tail", "sampled_token"] = "topk_tail"  # with kd_beta 1 (distill onpolicy's training)


class OnPolicyArms(Strict):
    """After the students: `distill onpolicy` from the `start` variant's checkpoint, on-policy (lmbda 1: the
    student samples, the teacher scores its tokens) against off-policy (lmbda 0: the teacher's own KD traces), at
    equal rounds and passes over each round's rows."""

    start: str = "sft"  # a variant name
    rounds: int = Field(8, ge=1)
    prompts_per_round: int = Field(100, ge=1)
    samples_per_prompt: int = Field(2, ge=1)
    passes: float = Field(2.0, gt=0.0, le=2.0)  # epochs over a round's rows: the steps follow from the rows
    max_steps: int | None = Field(None, ge=1)  # a cap on a round's steps
    # each round's Axolotl run starts a fresh AdamW from the last checkpoint: its first steps move every weight by
    # about the learning rate, which at 1e-3 threw a converged lab student off its optimum (docs/lab.md); a short
    # linear warmup lets the optimizer's second moments settle first
    learning_rate: float = Field(1e-4, ge=0.0)
    warmup_steps: int = Field(5, ge=0)
    kd_beta: float = Field(1.0, ge=0.0, le=1.0)
    # how the student samples each round: its own vLLM server (a start per round) or in-process transformers
    sampling: Literal["serve", "transformers"] = "serve"
    eval_every: int = Field(1, ge=1)  # evaluate round 0, every n-th round and the last
    arms: dict[str, Arm] = {"onpolicy": Arm(lmbda=1.0), "offpolicy": Arm(lmbda=0.0)}


class PrmRecipe(Strict):
    """Issue 16 in the lab: `distill prm-label` on the teacher's traces, an Axolotl PRM per label kind (from the
    teacher's checkpoint, with a fresh 2-class head), `distill prm-eval` on held-out traces whose first wrong step
    is known exactly (lab/step_truth.py), and the PRM back in the filter (students with ``data: prm``)."""

    completions: int = Field(8, ge=1, le=64)  # Monte Carlo completions per step prefix
    until: Literal["first-error", "all"] = "first-error"
    labels: list[Literal["hard", "soft"]] = ["hard", "soft"]  # one PRM each
    filter_with: Literal["hard", "soft"] = "hard"  # the PRM that filters the `data: prm` students' traces
    threshold: float = Field(0.5, ge=0.0, le=1.0)  # prm-eval's threshold (a step under it is a predicted error)
    # the filter's threshold (a trace whose weakest step is under it is rejected): a number, or "best": the one
    # with the best F1 on the PRM's held-out traces (a calibration set: never the students' evaluation problems)
    filter_threshold: float | Literal["best"] = "best"
    max_steps: int = Field(300, ge=1)  # PRM training steps
    micro_batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    held_out_problems: int = Field(200, ge=1)  # the teacher's traces on them are the prm-eval set

    @model_validator(mode="after")
    def _filter_trained(self) -> PrmRecipe:
        if self.filter_with not in self.labels:
            raise ValueError(f"filter_with: {self.filter_with!r} is not among labels {self.labels}")
        return self


class LabConfig(Strict):
    name: str = "demo"
    teacher: TeacherRecipe = TeacherRecipe()
    generation: Generation = Generation()
    students: StudentTraining = StudentTraining()
    evaluation: Evaluation = Evaluation()
    onpolicy: OnPolicyArms | None = None
    prm: PrmRecipe | None = None
    diagnostic: Diagnostic | None = None
    # the summary maps each variant's tokens per answer to ms per clean-up of a 1.5B 8da4w student on the seed's
    # devices (lab/projection.py), with the variant that fits 450 ms best on each
    latency_projection: bool = False
    problems_seed: int = 0

    @model_validator(mode="after")
    def _start_variant(self) -> LabConfig:
        names = [v.name for v in self.students.variants]
        if self.onpolicy and self.onpolicy.start not in names:
            raise ValueError(f"onpolicy.start: {self.onpolicy.start!r} is not a variant ({', '.join(names)})")
        for v in self.students.variants:
            if self.prm is None and v.data in ("prm", "random"):
                raise ValueError(f"students.variants: {v.name}: data {v.data!r} needs a prm: section (the PRM that "
                                 "filters" + (", whose kept count sizes the random subset)" if v.data == "random"
                                              else ")"))
        if "baseline" in self.students.model_fields_set and self.students.baseline not in names:
            raise ValueError(f"students.baseline: {self.students.baseline!r} is not a variant ({', '.join(names)})")
        if self.prm is not None and self.teacher.task != "addition":
            raise ValueError("prm: the lab knows the first wrong step of addition traces only (teacher.task)")
        return self


def load_lab_config(name_or_path: str | None, overrides: dict[str, Any] | None = None) -> LabConfig:
    """A shipped config name (``lab/configs/<name>.yaml``) or a path, with dotted overrides
    (``{"students.max_steps": 50}``); errors name the field."""
    path = Path(name_or_path) if name_or_path and Path(name_or_path).is_file() else \
        CONFIGS_DIR / f"{name_or_path or 'demo'}.yaml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml")))
        raise SpecError(f"--config: {name_or_path!r} not found; give a YAML path or one of: {shipped}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    apply_sets(data, overrides or {})
    try:
        return LabConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise SpecError(f"{path.name}: " + (f"{where}: " if where else "")
                        + first["msg"].removeprefix("Value error, ")) from None


def model_name(variant: str, seed: int, seeds: int) -> str:
    """A student's name in the lab's eval: the variant, with its seed when there are several."""
    return variant if seeds == 1 else f"{variant}-s{seed}"


def student_overrides(max_steps: int, micro_batch_size: int, learning_rate: float, seed: int) -> dict[str, Any]:
    """The `distill config --set` keys every lab student is trained with (the lab's students and its probes):
    cosine from the learning rate after 10 warmup steps, the seed for Axolotl's data order, enough epochs that
    ``max_steps`` ends the run."""
    return {"max_steps": max_steps, "micro_batch_size": micro_batch_size, "learning_rate": learning_rate,
            "lr_scheduler": "cosine", "warmup_steps": 10, "seed": seed, "logging_steps": 50, "num_epochs": 1000}
