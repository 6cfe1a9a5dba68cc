"""Build and run the Distilabel pipeline for a spec: load → generate → curate → write, then finalize."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from pipelines.engines.log import LOG_NAME, run_log
from pipelines.run import fingerprint
from pipelines.run.lock import run_lock
from pipelines.run.progress import DEFAULT_EVERY_S, RunProgress
from pipelines.source import iter_problems
from pipelines.spec import DatasetSpec, SpecError
from pipelines.store import (
    done_problem_ids,
    failed_problem_ids,
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


def build_pipeline(spec: DatasetSpec, cache_dir: Path, limit: int | None, skip_ids: set[str],
                   api_key: str | None = None, total: int | None = None, judge_api_key: str | None = None,
                   fence: Any = None) -> Any:

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
        load = LoadProblems(name="load", source=spec.source, limit=limit, skip_ids=sorted(skip_ids),
                            batch_size=batch, dedupe=spec.dedupe, decontamination=spec.decontamination,
                            report_dir=str(cache_dir))
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
        write = WriteParts(name="write", cache_dir=str(cache_dir), total_problems=total, input_batch_size=batch,
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


def _kept_problem_ids(spec: DatasetSpec, limit: int | None, cache_dir: Path) -> list[str]:
    """The ids of a local source's problems that dedupe and decontamination keep; writes the filter report."""
    from pipelines.filters.apply import ProblemFilter

    problems = ProblemFilter(spec.dedupe, spec.decontamination)
    ids = [row["problem_id"] for _, row in problems.apply(iter_problems(spec.source, limit))]
    problems.write_report(cache_dir)
    if not ids:
        raise SpecError(f"source.path: {spec.source.path!r} has no problems in field "
                        f"{spec.source.problem_field!r}; check the file or the field name")
    return ids


def work_left(spec: DatasetSpec, limit: int | None, cache_dir: Path, kept_ids: list[str] | None = None) -> bool:
    """Whether a run would ask the teacher for anything (a finished run only rewrites the dataset).

    ``kept_ids`` are the filtered problems when the caller has them. Otherwise the source is read raw first:
    when every problem is done the filters (benchmark loads, MinHash of every problem) are not needed at all.
    With them, it stops at the first problem not done; it reads everything only when all is done, which is
    when it matters: distilabel would wait forever for the loader's empty last batch.
    """
    if not cache_dir.is_dir():
        return True
    done = done_problem_ids(cache_dir) - failed_problem_ids(cache_dir)
    if kept_ids is not None:
        return any(pid not in done for pid in kept_ids)
    if all(row["problem_id"] in done for row in iter_problems(spec.source, limit)):
        return False
    from pipelines.filters.apply import ProblemFilter

    problems = ProblemFilter(spec.dedupe, spec.decontamination).apply(iter_problems(spec.source, limit))
    return any(row["problem_id"] not in done for _, row in problems)


def _check_complete(spec: DatasetSpec, total: int | None, cache_dir: Path) -> None:
    """distilabel turns a failed batch into None rows and carries on: say so instead of finishing short."""
    if total is None or not spec.source.is_local:
        return
    missing = total - len(done_problem_ids(cache_dir))
    if missing > 0:
        from pipelines.errors import RunIncomplete

        raise RunIncomplete(f"{missing} of {total} problems were not written (a pipeline step failed; see "
                            f"{cache_dir / LOG_NAME}); rerun the same command to retry them")


def run_spec(spec: DatasetSpec, spec_text: str, out_dir: Path, cache_dir: Path | None = None,
             limit: int | None = None, api_key: str | None = None, fresh: bool = False,
             progress_every_s: float = DEFAULT_EVERY_S, judge_api_key: str | None = None) -> dict[str, Any]:
    """Run (or resume) the pipeline and write the dataset folder; returns the stats.

    ``fresh`` discards what an earlier run generated into this folder (the refusal of a changed spec says so).
    The log goes to ``<cache>/run.log`` (the terminal keeps the factory's lines unless the root logger is at
    DEBUG, i.e. ``-v``); progress is a bar on a TTY, else a line every ``progress_every_s`` seconds.
    """
    cache_dir = cache_dir or out_dir / ".cache"
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
        return _run_locked(spec, spec_text, out_dir, cache_dir, limit, api_key,
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


def _run_locked(spec: DatasetSpec, spec_text: str, out_dir: Path, cache_dir: Path, limit: int | None,
                api_key: str | None, display: _Display | None = None,
                judge_api_key: str | None = None, fence: Any = None) -> dict[str, Any]:
    kept_ids = _kept_problem_ids(spec, limit, cache_dir) if spec.source.is_local else None
    total = len(kept_ids) if kept_ids is not None else limit
    failed = failed_problem_ids(cache_dir)
    if failed:
        log.info("asking the teacher again for %d problems whose requests failed in an earlier run", len(failed))
    done = done_problem_ids(cache_dir) - failed
    state_file = cache_dir / "run_state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {"wall_time_s": 0.0, "runs": 0}
    started = time.monotonic()
    if work_left(spec, limit, cache_dir, kept_ids):
        log.info("running %s: %s problems to do, %d already done", spec.name,
                 "?" if total is None else total - len(done), len(done))
        pipeline = build_pipeline(spec, cache_dir, limit, done, api_key=api_key, total=total,
                                  judge_api_key=judge_api_key, fence=fence)
        if display is not None:
            pipeline.log_handler, pipeline.verbose = display.log_handler, display.verbose
        with RunProgress(cache_dir, len(done), total, every_s=display.every_s if display else DEFAULT_EVERY_S):
            pipeline.run(use_cache=False)
        if pipeline.stop_reason is not None:  # Ctrl-C, SIGTERM, or a worker that stopped it (disk full)
            raise pipeline.stop_reason
        _check_complete(spec, total, cache_dir)
    else:
        log.info("all %d problems already done; writing the dataset", len(done))
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
    write_text_atomic(meta_dir(out_dir) / "spec.yaml", spec_text)
    return finalize(cache_dir, out_dir, spec.output.rows_per_file, run_info)
