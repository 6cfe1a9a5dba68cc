"""Generation for an eval: one factory run (``distill run SPEC``, i.e. pipelines/run/runner.py's ``run_spec``) per
(model, set).

Each run is a normal dataset folder, ``OUT/runs/<model>/<set>/``, made by the same Distilabel pipeline as
``distill run``: the rolling window of requests, retries with backoff, atomic part files and resume. A killed
eval reruns with the same command and continues; a run folder made with other generation settings is refused
rather than mixed (``.cache/eval-run.json`` holds them). Each run is a sub-job in its own process
(pipelines/run/subjob.py says why), its spec in ``OUT/specs/``, its log in ``OUT/logs/``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.eval.config import EvalConfig, ModelConfig
from distill.eval.models import Endpoint, open_model
from distill.eval.sets import EvalSet, materialize, set_problems
from pipelines.spec import DatasetSpec, SpecError
from pipelines.store import write_text_atomic

log = logging.getLogger("distill")


@dataclass(frozen=True)
class Plan:
    """One (model, set) run and the protocol it samples with."""

    model: ModelConfig
    eval_set: EvalSet
    problems_file: Path
    problems_sha256: str
    out_dir: Path
    samples: int
    temperature: float
    top_p: float
    max_new_tokens: int
    logprobs: bool
    seed: int | None = None
    problem_ids: tuple[str, ...] = ()  # the set's problems: which the run folder has not finished

    @property
    def key(self) -> dict[str, Any]:
        """What the samples depend on; a URL's port may change between runs, the served model may not."""
        model = self.model
        target = model.path if model.path is not None else f"served:{model.served_model or model.name}"
        return {"model": target, "weights": weights_stamp(model.path),
                "backend": model.backend if model.path else "url",
                "problems_sha256": self.problems_sha256, "samples": self.samples, "temperature": self.temperature,
                "top_p": self.top_p, "max_new_tokens": self.max_new_tokens, "logprobs": self.logprobs,
                "prompt": self.eval_set.prompt.model_dump(), **({"seed": self.seed} if self.seed is not None else {})}


def weights_stamp(path: str | None) -> str | None:
    """Size and modification time of a local model's weight files: a checkpoint retrained in place is another
    model (its old samples must not be resumed), and this costs no read of the weights."""
    if path is None or not Path(path).is_dir():
        return None
    files = sorted(f for f in Path(path).iterdir() if f.suffix in (".safetensors", ".bin", ".pt", ".gguf"))
    return ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files) or None


def prepare_sets(cfg: EvalConfig, sets: list[EvalSet]) -> dict[str, tuple[Path, str, list[dict[str, str]]]]:
    """Write each set's problems to ``OUT/sets/<set>.jsonl``; per set its file, sha256 and problems."""
    prepared = {}
    for eval_set in sets:
        problems = set_problems(eval_set, cfg.offline, cfg.limit)
        path = cfg.out / "sets" / f"{eval_set.name}.jsonl"
        prepared[eval_set.name] = (path, materialize(problems, path), problems)
    return prepared


def plan_runs(cfg: EvalConfig, sets: list[EvalSet], prepared: dict[str, tuple[Path, str, Any]]) -> list[Plan]:
    plans = []
    for model in cfg.models:
        for eval_set in sets:
            path, sha, problems = prepared[eval_set.name]
            logprobs = cfg.logprobs == "on" or (cfg.logprobs == "auto" and model.served)
            plans.append(Plan(model, eval_set, path, sha, cfg.out / "runs" / model.name / eval_set.name,
                              cfg.samples or eval_set.samples,
                              eval_set.temperature if cfg.temperature is None else cfg.temperature,
                              cfg.top_p or eval_set.top_p, cfg.max_new_tokens or eval_set.max_new_tokens, logprobs,
                              cfg.seed, tuple(str(p["problem_id"]) for p in problems)))
    return plans


def dataset_spec(plan: Plan, endpoint: Endpoint) -> DatasetSpec:
    """The factory spec of one run (the run records it in its folder's __meta__/spec.yaml)."""
    model = plan.model
    data = {
        "name": f"eval-{model.name}-{plan.eval_set.name}",
        "description": f"distill eval: {model.name} on {plan.eval_set.name}",
        "source": {"path": str(plan.problems_file.resolve()), "problem_field": "problem", "answer_field": "answer",
                   "id_field": "problem_id"},
        "prompt": plan.eval_set.prompt.model_dump(),
        "teacher": {"backend": endpoint.backend, "model": endpoint.model, "base_url": endpoint.base_url,
                    "api_key_env": model.api_key_env, "num_samples": plan.samples,
                    "temperature": plan.temperature, "top_p": plan.top_p, "max_new_tokens": plan.max_new_tokens,
                    "top_logprobs": 1 if plan.logprobs else None, "max_concurrency": model.max_concurrency,
                    "timeout_s": 3600.0, "trust_remote_code": model.trust_remote_code,
                    "seed": plan.seed if endpoint.backend == "transformers" else None},
        "verification": plan.eval_set.verification,
        "similarity": plan.eval_set.similarity.model_dump(),
        "run": {"batch_size": model.batch_size or (64 if endpoint.backend == "openai" else 8)},
        "dedupe": {"enabled": False},  # every problem of a benchmark is evaluated, duplicates too
    }
    return DatasetSpec.model_validate(data)


def check_key(plan: Plan) -> None:
    """Refuse to resume a run folder that was sampled with other settings; record them for a new one."""
    path = plan.out_dir / ".cache" / "eval-run.json"
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in plan.key if old.get(k) != plan.key[k])
        if changed:
            raise SpecError(f"{plan.out_dir}: sampled earlier with other settings ({', '.join(changed)} differ); "
                            "use another --out, or delete that folder to start it again")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(plan.key, indent=2) + "\n")


def _budget_fits(plan: Plan, endpoint: Endpoint) -> None:
    if endpoint.max_model_len and plan.max_new_tokens >= endpoint.max_model_len:
        raise SpecError(f"--max-new-tokens: {plan.max_new_tokens} tokens for {plan.eval_set.name} do not fit model "
                        f"{plan.model.name}'s context ({endpoint.max_model_len} tokens); lower it, or serve the "
                        "model with a longer max_model_len")


def generate(plans: list[Plan], out: Path, api_keys: dict[str, str | None]) -> None:
    """Run every plan, model by model (at most one vLLM server the eval started is up at a time)."""
    from pipelines.run.plan import finished_ids
    from pipelines.run.subjob import run_subjob

    for model in dict.fromkeys(p.model.name for p in plans):
        runs = [p for p in plans if p.model.name == model]
        for plan in runs:
            check_key(plan)
        pending = [p for p in runs if not finished_ids(p.out_dir / ".cache").issuperset(p.problem_ids)]
        with open_model(runs[0].model, out / "serve", api_keys.get(model), needed=bool(pending)) as endpoint:
            for plan in runs:
                if plan in pending:
                    _budget_fits(plan, endpoint)
                    log.info("eval: %s on %s (%d samples per problem)", model, plan.eval_set.name, plan.samples)
                elif (plan.out_dir / "__meta__" / "stats.json").is_file():
                    continue  # finished earlier (stats.json is written last): nothing to ask, nothing to rewrite
                name = f"{plan.model.name}-{plan.eval_set.name}"
                log_path = out / "logs" / f"{name}.log"
                try:
                    run_subjob(dataset_spec(plan, endpoint), plan.out_dir, out / "specs" / f"{name}.yaml", log_path,
                               api_key=api_keys.get(model))
                except SpecError as exc:
                    raise SpecError(f"{plan.model.name} on {plan.eval_set.name}: {exc} (log: {log_path})") from None
