"""On-policy distillation settings: one pydantic model loaded from YAML (``distill onpolicy CONFIG``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from pipelines.spec import SpecError, Strict, Url, _one_line, apply_sets


class TeacherEndpoint(Strict):
    """The teacher that grades every student token: a running vLLM (``distill serve``), scored with
    ``prompt_logprobs`` (one prefill a sequence, no generation)."""

    base_url: Url
    model: str  # the served model name


class Sampling(Strict):
    """How the student samples the round's prompts: its own vLLM server, started per round (``serve``), or
    in-process with transformers (``transformers``: no server start, seeded per batch; for tiny CPU students
    such as the lab's, where a vLLM start costs more than the sampling)."""

    backend: Literal["serve", "transformers"] = "serve"

    prompts_per_round: int = Field(100, ge=1)  # round r takes the source's problems [r*N, (r+1)*N)
    samples_per_prompt: int = Field(2, ge=1, le=64)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(512, ge=1)
    max_model_len: int | None = Field(None, ge=16)  # the student server's context (default: the model's)
    dtype: str | None = None  # default float32 without a GPU


class Training(Strict):
    """The round's `axolotl train` (KD from the current checkpoint), rendered from an axolotl_configs template.

    Fresh samples: a round trains ``passes`` times over its rows (at most 2), so the optimizer steps are derived
    from the rows (ceil(passes x rows / (micro_batch_size x gradient_accumulation_steps))); ``max_steps`` only
    caps them. Many short rounds then replace a few long ones (GKD and the Thinking Machines recipe sample afresh
    every step)."""

    template: str = "kd-qwen2.5-1.5b.yaml"
    passes: float = Field(1.0, gt=0.0, le=2.0)  # epochs over the round's rows
    max_steps: int | None = Field(None, ge=1)  # an upper bound on the derived steps
    learning_rate: float = Field(1e-5, ge=0.0)
    micro_batch_size: int | None = Field(None, ge=1)
    kd_beta: float = Field(1.0, ge=0.0, le=1.0)  # GKD's beta: 0 forward KL(teacher || student), 1 reverse, JSD between
    # with kd_beta 1: topk_tail (reverse KL over the teacher's top k + a tail bucket, every position) or
    # sampled_token (the per-token estimate from the sampled token's teacher log-probability: kd_divergence
    # reverse_sampled)
    reverse_kl: Literal["topk_tail", "sampled_token"] = "topk_tail"
    # the KD weight; 1 - kd_alpha would be a cross-entropy on the rows' tokens, refused on the student's own samples
    kd_alpha: float = Field(1.0, ge=0.0, le=1.0)
    top_k: int = Field(20, ge=1, le=20)
    max_seq_len: int = Field(4096, ge=16)
    cpu: bool = False  # the float32 CPU profile (`distill config --smoke` with these steps): tests and the lab
    overrides: dict[str, Any] = {}  # any other top-level Axolotl key


class Evaluation(Strict):
    set: str  # an eval set name or YAML (`distill eval --list`)
    samples: int = Field(4, ge=1)
    temperature: float = Field(0.6, ge=0.0, le=2.0)
    max_new_tokens: int | None = Field(None, ge=1)
    limit: int | None = Field(None, ge=1)
    # evaluate round 0, every `every`-th round and the last (1: every round); the rounds between train unevaluated
    every: int = Field(1, ge=1)
    batch_size: int | None = Field(None, ge=1)  # problems per generate() call in-process (`distill eval`'s)
    offline: bool = False  # a shipped set's local copy instead of the Hub
    backend: Literal["auto", "serve", "transformers"] = "auto"  # auto: in-process without a GPU


class OnPolicyConfig(Strict):
    name: str = Field("onpolicy", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    student: str  # the starting checkpoint (a folder)
    teacher: TeacherEndpoint
    prompts: str  # a spec (name or YAML): its source gives the prompts, its prompt section the messages
    rounds: int = Field(2, ge=1, le=100)
    # GKD's lambda: the share of each round's KD rows sampled by the student; the rest comes from `offpolicy`
    lmbda: float = Field(1.0, ge=0.0, le=1.0)
    offpolicy: str | None = None  # a `distill export --format kd` folder of the teacher's own traces
    # lmbda 0 (the off-policy baseline): rows drawn from `offpolicy` per round, without replacement across rounds
    # (a seeded order, wrapping around when it runs out). Default: prompts_per_round x samples_per_prompt, the rows
    # an on-policy round has the teacher score, so the two arms spend an equal teacher budget.
    offpolicy_rows: int | None = Field(None, ge=1)
    sampling: Sampling = Sampling()
    training: Training = Training()
    evaluation: Evaluation | None = None
    out: Path = Path("out/onpolicy")
    seed: int = 0


def load_onpolicy_config(path: Path, overrides: dict[str, Any] | None = None) -> OnPolicyConfig:
    """The YAML at ``path`` with dotted CLI overrides on top; an error names the field."""
    if not path.is_file():
        raise SpecError(f"CONFIG: {path} not found; start from distill/onpolicy/configs/qwen2.5-1.5b.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    apply_sets(data, overrides or {})
    try:
        cfg = OnPolicyConfig.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{path.name}: {_one_line(exc)}") from None
    if cfg.lmbda < 1.0 and not cfg.offpolicy:
        raise SpecError(f"{path.name}: offpolicy: lmbda {cfg.lmbda} < 1 mixes in off-policy rows; give a "
                        "`distill export --format kd` folder (or set lmbda: 1.0)")
    problem = recipe_problem(cfg)
    if problem:
        raise SpecError(f"{path.name}: {problem}")
    return cfg


def recipe_problem(cfg: OnPolicyConfig) -> str | None:
    """What the on-policy recipe refuses, as one line naming the key: a cross-entropy on the student's own samples
    (it raises the probability of whatever the student sampled, its mistakes included), and the sampled-token
    estimate on rows the student did not sample."""
    t = cfg.training
    if cfg.lmbda > 0:
        if t.kd_alpha != 1.0:
            return (f"training.kd_alpha: {t.kd_alpha} puts a cross-entropy (weight {round(1 - t.kd_alpha, 6)}) on the "
                    "student's own samples, raising whatever it sampled; set 1.0 (the KD loss alone)")
        for key in ("kd_ce_alpha", "kd_alpha"):
            value = t.overrides.get(key)
            if value is not None and value != (0 if key == "kd_ce_alpha" else 1):
                return (f"training.overrides.{key}: {value} puts a cross-entropy on the student's own samples; "
                        "remove it (on-policy rounds train kd_alpha 1, kd_ce_alpha 0)")
    if "max_steps" in t.overrides:
        return ("training.overrides.max_steps: the steps are derived from the round's rows (training.passes); "
                "use training.passes, or training.max_steps as a cap")
    if t.reverse_kl == "sampled_token":
        if t.kd_beta != 1.0:
            return (f"training.reverse_kl: sampled_token is the reverse KL (kd_beta 1), not kd_beta {t.kd_beta}; "
                    "set kd_beta: 1.0 or reverse_kl: topk_tail")
        if cfg.lmbda < 1.0:
            return (f"training.reverse_kl: sampled_token with lmbda {cfg.lmbda}: the off-policy rows are the teacher's "
                    "samples, on which the estimate is not the reverse KL; use topk_tail or lmbda 1.0")
    return None
