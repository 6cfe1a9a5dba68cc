"""`distill run` with the rolling window against simulated teachers: every problem exactly once, load spread
over several endpoints, never more in flight than allowed, resume, and the batch-at-a-time comparison mode."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_distill, write_jsonl, write_spec
from test_teacher_sim import sim


def problems_file(path: Path, count: int) -> Path:
    return write_jsonl(path, [{"question": f"Problem {i}: add {i} and {i + 3}.", "answer": "42"} for i in range(count)])


@contextlib.contextmanager
def teachers(count: int, slots: int):
    config = sim.SimConfig(slots=slots, median_s=0.03, sigma=1.0, cap_s=0.3)
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(sim.SimThread(config)) for _ in range(count)]


def spec_for(tmp_path: Path, source: Path, urls: list[str], **run: object) -> Path:
    return write_spec(tmp_path / "spec.yaml", source,
                      teacher={"base_url": urls, "model": "sim-teacher", "num_samples": 2,
                               "max_new_tokens": 100_000, "max_concurrency": 3},
                      verification="exact", dedupe={"enabled": False}, run={"batch_size": 4, **run})


def samples_per_problem(out: Path) -> dict[str, list[int]]:
    frame = pd.read_parquet(out)
    return {pid: sorted(group["sample_index"]) for pid, group in frame.groupby("problem_id")}


def test_window_spreads_over_two_endpoints_and_writes_every_problem_once(tmp_path):
    source = problems_file(tmp_path / "problems.jsonl", 24)  # a multiple of the batch size: the end mark matters
    with teachers(2, slots=3) as servers:
        spec = spec_for(tmp_path, source, [s.base_url for s in servers])
        result = run_distill("run", spec, "--out", tmp_path / "out")
        stats = [s.stats() for s in servers]
    assert "wrote" in result.stdout and "24 problems" in result.stdout
    assert samples_per_problem(tmp_path / "out") == {str(i): [0, 1] for i in range(24)}
    frame = pd.read_parquet(tmp_path / "out")
    assert frame["kept"].all() and (frame["completion_tokens"] > 0).all()
    requests = [s["requests"] for s in stats]
    assert sum(requests) == 24 and min(requests) >= 6, requests  # least-in-flight spreads the load
    assert all(s["peak_requests"] <= 3 for s in stats)  # teacher.max_concurrency is per endpoint


def test_window_resume_sends_only_the_missing_problems(tmp_path):
    source = problems_file(tmp_path / "problems.jsonl", 22)
    with teachers(1, slots=4) as (server,):
        spec = spec_for(tmp_path, source, [server.base_url])
        run_distill("run", spec, "--out", tmp_path / "out", "--limit", "9")
        first = server.stats()["requests"]
        run_distill("run", spec, "--out", tmp_path / "out")
        second = server.stats()["requests"] - first
    assert (first, second) == (9, 13)
    assert samples_per_problem(tmp_path / "out") == {str(i): [0, 1] for i in range(22)}


@pytest.mark.parametrize("count", [8, 10])
def test_batch_dispatch_still_writes_every_problem_once(tmp_path, count):
    source = problems_file(tmp_path / "problems.jsonl", count)
    with teachers(1, slots=4) as (server,):
        spec = spec_for(tmp_path, source, [server.base_url], dispatch="batch")
        run_distill("run", spec, "--out", tmp_path / "out")
        assert server.stats()["requests"] == count
    assert samples_per_problem(tmp_path / "out") == {str(i): [0, 1] for i in range(count)}


@pytest.mark.parametrize("count,batch", [(8, 4), (9, 4), (1, 4), (3, 1)])
def test_loader_never_ends_on_an_empty_batch_and_marks_the_last_problem(tmp_path, count, batch):
    from pipelines.run.plan import make_plan
    from pipelines.spec import DatasetSpec
    from pipelines.steps.load import END_OF_STREAM, LoadProblems
    from pipelines.store import write_part

    source = problems_file(tmp_path / "problems.jsonl", count)
    spec = DatasetSpec.model_validate({"name": "load", "source": {"path": str(source), "problem_field": "question"},
                                       "dedupe": {"enabled": False}})
    cache = tmp_path / "cache"
    write_part(cache, [{"problem_id": "0", "problem_index": 0, "sample_index": 0, "problem": "p", "gold": None,
                        "kept": True, "rejection_reason": None}])  # problem 0 is done: the plan skips it
    load = LoadProblems(problems=make_plan(spec, None, cache).pending(), batch_size=batch)
    load.load()
    batches = list(load.process())
    rows = [row for rows, _ in batches for row in rows]
    assert [last for _, last in batches] == [False] * (len(batches) - 1) + [True]
    assert all(rows for rows, _ in batches) if count > 1 else batches == [([], True)]
    assert [r["problem_id"] for r in rows] == [str(i) for i in range(1, count)]
    assert [r[END_OF_STREAM] for r in rows] == [False] * (len(rows) - 1) + [True] * bool(rows)


def test_throttled_pipeline_snapshots_at_most_every_few_seconds(monkeypatch):
    from distilabel.pipeline import Pipeline

    from pipelines.engines.local import ThrottledPipeline

    snapshots = []
    monkeypatch.setattr(Pipeline, "_cache", lambda self: snapshots.append(1))
    monkeypatch.setattr(Pipeline, "_finalize_pipeline_execution", lambda self: self._cache())
    pipeline = ThrottledPipeline(name="throttle-test")
    for _ in range(50):
        pipeline._cache()
    assert len(snapshots) == 1  # the first, then nothing within snapshot_every_s
    pipeline._finalize_pipeline_execution()
    assert len(snapshots) == 2  # the final snapshot is never skipped
