"""Generation for an eval: one factory run (``distill run SPEC``, i.e. pipelines/run/runner.py's ``run_spec``) per
(model, set).

Each run is a normal dataset folder, ``OUT/runs/<model>/<set>/``, made by the same Distilabel pipeline as
``distill run``: the rolling window of requests, retries with backoff, atomic part files and resume. A killed
eval reruns with the same command and continues; a run folder made with other generation settings is refused
rather than mixed (``.cache/eval-run.json`` holds them). Each run is its own ``distill run`` process (spec in
``OUT/specs/``, log in ``OUT/logs/``): distilabel closes its logging queue and worker pools when a pipeline
ends, and a second pipeline in the same process hangs at shutdown with an in-process (transformers) model.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

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
            path, sha, _ = prepared[eval_set.name]
            logprobs = cfg.logprobs == "on" or (cfg.logprobs == "auto" and model.served)
            plans.append(Plan(model, eval_set, path, sha, cfg.out / "runs" / model.name / eval_set.name,
                              cfg.samples or eval_set.samples,
                              eval_set.temperature if cfg.temperature is None else cfg.temperature,
                              cfg.top_p or eval_set.top_p, cfg.max_new_tokens or eval_set.max_new_tokens, logprobs,
                              cfg.seed))
    return plans


def dataset_spec(plan: Plan, endpoint: Endpoint) -> tuple[DatasetSpec, str]:
    """The factory spec of one run, and its YAML (kept in the run folder's __meta__/spec.yaml)."""
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
                    "seed": plan.seed if endpoint.backend != "vllm" else None},
        "verification": plan.eval_set.verification,
        "similarity": plan.eval_set.similarity.model_dump(),
        "run": {"batch_size": model.batch_size or (64 if endpoint.backend == "openai" else 8)},
        "dedupe": {"enabled": False},  # every problem of a benchmark is evaluated, duplicates too
    }
    return DatasetSpec.model_validate(data), yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


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


def _stop_group(child: subprocess.Popen[bytes], grace_s: float = 60.0) -> None:
    """SIGINT to the run's process group, SIGKILL to what still lives after ``grace_s``."""
    from distill.serve.server import live_group_members

    for sig, wait in ((signal.SIGINT, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while live_group_members(child.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not live_group_members(child.pid):
            break
    try:
        child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def run_in_subprocess(spec_text: str, plan: Plan, specs_dir: Path, logs_dir: Path) -> None:
    """``distill run SPEC --out DIR`` for one plan, its output in a log file; a failure is the run's error line."""
    name = f"{plan.model.name}-{plan.eval_set.name}"
    spec_path, log_path = specs_dir / f"{name}.yaml", logs_dir / f"{name}.log"
    specs_dir.mkdir(parents=True, exist_ok=True)
    logs_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(spec_path, spec_text)
    with log_path.open("ab") as log_file:
        # Its own process group: on Ctrl-C or SIGTERM the whole run (distilabel's workers too) gets SIGINT,
        # distilabel's graceful stop, and what is left of it SIGKILL after a grace period (resume-safe).
        child = subprocess.Popen([sys.executable, "-m", "distill.cli", "run", str(spec_path), "--out",
                                  str(plan.out_dir)], stdout=log_file, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            code = child.wait()
        except BaseException:
            _stop_group(child)
            raise
    if code != 0:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        error = next((line.removeprefix("error: ") for line in reversed(lines) if line.startswith("error: ")),
                     f"exit status {code}")
        raise SpecError(f"{plan.model.name} on {plan.eval_set.name}: {error} (log: {log_path})")


def generate(plans: list[Plan], out: Path, api_keys: dict[str, str | None]) -> None:
    """Run every plan, model by model (at most one vLLM server the eval started is up at a time)."""
    from pipelines.run.runner import work_left

    for model in dict.fromkeys(p.model.name for p in plans):
        runs = [p for p in plans if p.model.name == model]
        for plan in runs:
            check_key(plan)
        pending = [p for p in runs if work_left(dataset_spec(p, Endpoint("openai", p.model.name))[0], None,
                                                p.out_dir / ".cache")]
        with open_model(runs[0].model, out / "serve", api_keys.get(model), needed=bool(pending)) as endpoint:
            for plan in runs:
                if plan in pending:
                    _budget_fits(plan, endpoint)
                    log.info("eval: %s on %s (%d samples per problem)", model, plan.eval_set.name, plan.samples)
                elif (plan.out_dir / "__meta__" / "stats.json").is_file():
                    continue  # finished earlier (stats.json is written last): nothing to ask, nothing to rewrite
                _, text = dataset_spec(plan, endpoint)
                run_in_subprocess(text, plan, out / "specs", out / "logs")
