"""Run a spec: preflight and plan, then the Distilabel pipeline (load → generate → curate → write), then finalize."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from pipelines.engines.log import LOG_NAME, run_log
from pipelines.filters.apply import write_report
from pipelines.run import fingerprint
from pipelines.run.lock import run_lock
from pipelines.run.plan import RunPlan
from pipelines.run.preflight import preflight
from pipelines.run.progress import DEFAULT_EVERY_S, RunProgress
from pipelines.spec import DatasetSpec, dump_spec
from pipelines.store import (
    finalize,
    meta_dir,
    remove_stale_temps,
    write_text_atomic,
)

log = logging.getLogger("distill")


def _resources(spec: DatasetSpec, step: str) -> Any:
    from distilabel.steps import StepResources

    gpus = getattr(spec.run.steps, step).gpus
    return StepResources(replicas=spec.run.replicas(step), gpus=gpus or None)


def _window_share(spec: DatasetSpec) -> int | None:
    """Each of several generation replicas (Ray) keeps its share of teacher.max_concurrency per endpoint."""
    import math

    replicas = spec.run.replicas("generate")
    if replicas == 1 or spec.run.dispatch != "window":
        return None
    return math.ceil(spec.teacher.max_concurrency * len(spec.teacher.base_urls) / replicas)


def build_pipeline(spec: DatasetSpec, cache_dir: Path, plan: RunPlan, api_key: str | None = None,
                   judge_api_key: str | None = None, fence: Any = None) -> Any:
    """The distilabel pipeline of ``spec``; its load step streams ``plan``'s pending problems."""

    from pipelines.engines.local import ThrottledPipeline
    from pipelines.steps.curate import CurateTraces
    from pipelines.steps.generate import TeacherGeneration
    from pipelines.steps.load import LoadProblems
    from pipelines.steps.write import WriteParts
    from pipelines.teachers.build import build_llm, generation_kwargs

    batch = spec.run.batch_size
    llm = build_llm(spec.teacher, api_key=api_key)
    llm.generation_kwargs = generation_kwargs(spec.teacher)
    name = f"distill-{spec.name}"
    if spec.run.engine == "ray":
        from pipelines.engines.ray.pipeline import ray_pipeline

        engine = ray_pipeline(spec, name, cache_dir / "distilabel", fence)
    else:
        engine = ThrottledPipeline(name=name, cache_dir=cache_dir / "distilabel")
    with engine as pipeline:
        load = LoadProblems(name="load", problems=plan.pending(), batch_size=batch)
        generate = TeacherGeneration(name="generate", llm=llm, prompt=spec.prompt,
                                     num_samples=spec.teacher.num_samples,
                                     max_new_tokens=spec.teacher.max_new_tokens, input_batch_size=batch,
                                     dispatch=spec.run.dispatch, resources=_resources(spec, "generate"),
                                     max_in_flight=_window_share(spec),
                                     drain_board=getattr(pipeline, "drain_board_for", lambda _: None)("generate"))
        curate = CurateTraces(name="curate", verification=spec.verification, prompt=spec.prompt,
                              similarity=spec.similarity, code=spec.code,
                              judge_mode=spec.judge.mode if spec.judge else None, input_batch_size=batch,
                              resources=_resources(spec, "curate"))
        stages: list[Any] = [load, generate, curate]
        if spec.judge is not None:
            from pipelines.steps.judge import JudgeTraces

            stages.append(JudgeTraces(name="judge", judge=spec.judge, verification=spec.verification,
                                      api_key=judge_api_key, input_batch_size=batch,
                                      resources=_resources(spec, "judge")))
        write = WriteParts(name="write", cache_dir=str(cache_dir), total_problems=plan.total, input_batch_size=batch,
                           resources=_resources(spec, "write"))
        if spec.prm is not None:
            from pipelines.steps.prm import PrmFilter
            from prm.scorer import check_config

            check_config(spec.prm)
            stages.append(PrmFilter(name="prm", prm=spec.prm, input_batch_size=batch,
                                    resources=_resources(spec, "prm")))
        stages.append(write)
        for upstream, downstream in zip(stages, stages[1:], strict=False):
            upstream >> downstream
    return pipeline


def _check_complete(plan: RunPlan, cache_dir: Path) -> None:
    """distilabel turns a failed batch into None rows and carries on: say so instead of finishing short."""
    missing = plan.missing(cache_dir)
    if missing > 0:
        from pipelines.errors import RunIncomplete

        raise RunIncomplete(f"{missing} of {plan.total} problems were not written (a pipeline step failed; see "
                            f"{cache_dir / LOG_NAME}); rerun the same command to retry them")


def run_spec(spec: DatasetSpec, out_dir: Path, cache_dir: Path | None = None, limit: int | None = None,
             api_key: str | None = None, fresh: bool = False, progress_every_s: float = DEFAULT_EVERY_S,
             judge_api_key: str | None = None, out_from_spec: bool = False) -> dict[str, Any]:
    """Check, plan, run (or resume) the pipeline and write the dataset folder; returns the stats.

    ``spec`` is the effective spec (CLI overrides applied): it is what ``__meta__/spec.yaml`` records. The
    preflight (pipelines/run/preflight.py) reads the source once into the run's plan and probes the teacher when
    there is work left, before anything is created; ``out_from_spec``: ``out_dir`` came from the spec's
    ``output.dir``, not the command line, and must stay inside the working directory. ``fresh`` discards what
    an earlier run generated into this folder (the refusal of a changed spec says so). The log goes to
    ``<cache>/run.log`` (the terminal keeps the factory's lines unless the root logger is at DEBUG, i.e. ``-v``);
    progress is a bar on a TTY, else a line every ``progress_every_s`` seconds.
    """
    cache_dir = cache_dir or out_dir / ".cache"
    plan = preflight(spec, limit, cache_dir, api_key, judge_api_key=judge_api_key, fresh=fresh,
                     spec_out_dirs=[out_dir] if out_from_spec else [])
    cache_dir.mkdir(parents=True, exist_ok=True)
    verbose = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    with run_lock(cache_dir), _shared_lock(spec, cache_dir) as lease, run_log(cache_dir, verbose) as log_handler:
        if fresh:
            discard_run(cache_dir, out_dir)
        remove_stale_temps(cache_dir, out_dir)  # what a killed run was writing; complete files are kept
        if fingerprint.check(cache_dir, spec):
            from pipelines.run.recurate import recurate_cache

            recurate_cache(cache_dir, spec, judge_api_key=judge_api_key)
            fingerprint.record(cache_dir, spec)
        # What is done may have changed since the preflight (--fresh, a re-curation): the cache is read again
        # under the lock, the source is not.
        return _run_locked(spec, plan.with_cache(cache_dir), out_dir, cache_dir, api_key,
                           _Display(log_handler, verbose, progress_every_s), judge_api_key,
                           fence=lease.lost if lease is not None else None)


def _shared_lock(spec: DatasetSpec, cache_dir: Path) -> Any:
    """On Ray the folder is on storage that several machines see: a lease holds it (pipelines/run/shared_lock.py)."""
    import contextlib

    if spec.run.engine != "ray":
        return contextlib.nullcontext()
    from pipelines.run.shared_lock import shared_lock

    return shared_lock(cache_dir)


class _Display:
    """How the pipeline shows itself: its log file, -v, the progress line's period."""

    def __init__(self, log_handler: logging.Handler, verbose: bool, every_s: float) -> None:
        self.log_handler, self.verbose, self.every_s = log_handler, verbose, every_s


def discard_run(cache_dir: Path, out_dir: Path) -> None:
    """Remove an earlier run's samples and dataset (``--fresh``); call under the lock, which stays."""
    import shutil

    from pipelines.run.lock import LOCK_NAME
    from pipelines.run.shared_lock import LEASE_NAME

    for path in cache_dir.iterdir():
        if path.name not in (LOCK_NAME, LEASE_NAME):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    (meta_dir(out_dir) / "stats.json").unlink(missing_ok=True)  # first: the folder is no longer complete
    for shard in out_dir.glob("data-*.parquet"):
        shard.unlink()


def _run_locked(spec: DatasetSpec, plan: RunPlan, out_dir: Path, cache_dir: Path, api_key: str | None,
                display: _Display | None = None, judge_api_key: str | None = None,
                fence: Any = None) -> dict[str, Any]:
    write_report(cache_dir, plan.report)  # what dedupe and decontamination dropped, beside the parts
    if plan.failed:
        log.info("asking the teacher again for %d problems whose requests failed in an earlier run",
                 len(plan.failed))
    state_file = cache_dir / "run_state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {"wall_time_s": 0.0, "runs": 0}
    started = time.monotonic()
    if plan.work_left:
        log.info("running %s: %d problems to do, %d already done", spec.name, plan.total - plan.done_count,
                 plan.done_count)
        pipeline = build_pipeline(spec, cache_dir, plan, api_key=api_key, judge_api_key=judge_api_key, fence=fence)
        if display is not None:
            pipeline.log_handler, pipeline.verbose = display.log_handler, display.verbose
        with RunProgress(cache_dir, plan.done_count, plan.total,
                         every_s=display.every_s if display else DEFAULT_EVERY_S):
            pipeline.run(use_cache=False)
        if pipeline.stop_reason is not None:  # Ctrl-C, SIGTERM, or a worker that stopped it (disk full)
            raise pipeline.stop_reason
        _check_complete(plan, cache_dir)
    else:
        log.info("all %d problems already done; writing the dataset", plan.total)
    state = {"wall_time_s": state["wall_time_s"] + time.monotonic() - started, "runs": state["runs"] + 1}
    write_text_atomic(state_file, json.dumps(state))
    run_info = {"spec": spec.name, "teacher_model": spec.teacher.model, "backend": spec.teacher.backend,
                "num_samples": spec.teacher.num_samples, "verification": spec.verification,
                "runs": state["runs"], "wall_time_s": state["wall_time_s"]}
    if spec.prm is not None:
        run_info["prm"] = {k: getattr(spec.prm, k) for k in ("model", "style", "backend", "aggregation", "threshold")}
    if spec.judge is not None:
        run_info["judge"] = {k: getattr(spec.judge, k) for k in ("model", "mode", "threshold")}
    meta_dir(out_dir).mkdir(parents=True, exist_ok=True)
    write_text_atomic(meta_dir(out_dir) / "spec.yaml", dump_spec(spec))  # the effective spec, overrides included
    return finalize(cache_dir, out_dir, spec.output.rows_per_file, run_info, filters=plan.report)
