"""Crash and resume: ``kill -9`` a run at random points, rerun, and every sample is there exactly once.

The run is a real ``distill run`` subprocess in its own session, killed with SIGKILL on its whole process
group (distilabel's workers included). ``CHAOS_KILLS`` sets how many kills (``make chaos`` uses more);
``CHAOS_SEED`` picks the kill points.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import DISTILL, ROOT, run_distill, write_jsonl, write_spec

from pipelines.run.lock import run_lock
from pipelines.spec import SpecError
from pipelines.store import finalize, part_files, write_part
from testing.loopback.faults import FaultPlan
from testing.loopback.teacher import LoopbackTeacher

PROBLEMS = 96
BATCH = 4
SAMPLES = 2
KILLS = int(os.environ.get("CHAOS_KILLS", "2"))
SEED = int(os.environ.get("CHAOS_SEED", "0"))


def _slow_sum(messages: list[dict[str, str]], index: int) -> str:
    time.sleep(0.05)  # keeps a run long enough to be killed in the middle of generation
    a, b = map(int, re.findall(r"\d+", messages[-1]["content"])[:2])
    return f"<thought>Add {a} and {b}.\n\nThat makes {a + b}.</thought>\\boxed{{{a + b}}}"


def _start(spec: Path, out: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:
        return subprocess.Popen([*DISTILL, "run", str(spec), "--out", str(out)], cwd=ROOT, stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI, distilabel's step processes, everything it started
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def _parts_problem_ids(cache: Path) -> list[str]:
    """Problem ids over all complete part files; every part must be a readable parquet file."""
    ids: list[str] = []
    for part in part_files(cache):
        table = pq.read_table(part)
        ids += sorted(set(table.column("problem_id").to_pylist()))
    return ids


def _wait_for(condition, proc: subprocess.Popen[bytes], limit_s: float = 240) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    raise AssertionError("the run neither reached the kill point nor finished")


def _kill_point(rng: random.Random, i: int, batches_left: int, kills_left: int) -> tuple[str, float]:
    """Alternating: a kill at a random time after the start (in start-up or generation), and one after a random
    number of new part files (mid-generation; leaving work for the kills to come) plus a fraction of a second."""
    if i % 2 == 0:
        return "time", rng.uniform(0.3, 4.0)
    return "parts", rng.randint(1, max(batches_left // (kills_left + 1), 1)) + rng.random()


def test_kill_9_at_random_points_then_resume_loses_and_duplicates_nothing(tmp_path: Path):
    rows = [{"question": f"What is {i} + {i + 2}?", "answer": str(2 * i + 2)} for i in range(PROBLEMS)]
    source = write_jsonl(tmp_path / "sums.jsonl", rows)
    out, log = tmp_path / "out", tmp_path / "runs.log"
    cache = out / ".cache"
    rng = random.Random(SEED)
    killed_mid_generation = kills = 0
    with LoopbackTeacher(_slow_sum) as teacher:
        spec = write_spec(tmp_path / "sums.yaml", source,
                          teacher={"base_url": teacher.base_url, "num_samples": SAMPLES, "max_concurrency": 2},
                          run={"batch_size": BATCH})
        for i in range(KILLS):
            batches_left = (PROBLEMS - len(_parts_problem_ids(cache))) // BATCH
            if batches_left < 2:
                break
            how, when = _kill_point(rng, i, batches_left, KILLS - i)
            proc = _start(spec, out, log)
            if how == "time":
                started = time.monotonic()
                finished = not _wait_for(lambda: time.monotonic() - started > when, proc)  # noqa: B023
            else:
                before = len(part_files(cache))
                target = before + int(when)
                finished = not _wait_for(lambda: len(part_files(cache)) >= target, proc)  # noqa: B023
                time.sleep(when % 1 * 0.5)
            _kill_group(proc)
            if finished:  # the random time came after the end: that run simply completed
                break
            kills += 1
            ids = _parts_problem_ids(cache)
            assert len(ids) == len(set(ids)), "a problem was written twice"
            killed_mid_generation += 0 < len(ids) < PROBLEMS
        time.sleep(0.5)  # requests of the killed run that were already read are served by now
        done = set(_parts_problem_ids(cache))
        # What a kill in the middle of writing a part or a shard leaves: half a file under a temporary name.
        (cache / "parts" / ".part-0000000000-deadbeef.parquet.tmp").write_bytes(b"PAR1 half a part")
        (out / ".data-00000-abcdef.tmp").write_bytes(b"PAR1 half a shard")
        requests_before = len(teacher.requests)
        proc = _start(spec, out, log)
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
        final_requests = teacher.requests[requests_before:]
    print(f"{kills} kills, {killed_mid_generation} with some but not all problems written")
    assert kills >= min(KILLS, 2) and killed_mid_generation >= 1, (kills, killed_mid_generation)
    # The resumed run asked only for the problems that were not written yet.
    asked = sorted(re.findall(r"What is (\d+) \+", r["messages"][-1]["content"])[0] for r in final_requests)
    assert sorted(asked, key=int) == sorted((str(i) for i in range(PROBLEMS) if str(i) not in done), key=int)
    frame = pd.read_parquet(out)
    assert len(frame) == PROBLEMS * SAMPLES
    assert not frame.duplicated(["problem_id", "sample_index"]).any()
    assert set(zip(frame.problem_id, frame.sample_index, strict=True)) == {
        (str(i), s) for i in range(PROBLEMS) for s in range(SAMPLES)}
    assert frame.kept.all()
    for row in frame.itertuples():
        a, b = map(int, re.findall(r"\d+", row.problem)[:2])
        assert row.answer == f"\\boxed{{{a + b}}}" and row.correct
    assert not list(out.rglob("*.tmp")), list(out.rglob("*.tmp"))
    stats = json.loads((out / "__meta__" / "stats.json").read_text())
    assert stats["samples"] == PROBLEMS * SAMPLES and stats["runs"] >= 1


def _records(first: int, count: int) -> list[dict]:
    return [{"problem_id": str(i), "problem_index": i, "sample_index": 0, "problem": f"p{i}", "gold": "1",
             "kept": True, "rejection_reason": None, "completion_tokens": 3} for i in range(first, first + count)]


@pytest.mark.parametrize("crash_at", range(4))
def test_finalize_crash_at_any_rename_recovers_on_rerun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        crash_at: int):
    """Finalize dies (as if killed) at each of its file operations in turn; the next finalize is exact."""
    import pipelines.store as store

    cache, out = tmp_path / "cache", tmp_path / "out"
    for first in (0, 5, 10):
        write_part(cache, _records(first, 5))
    finalize(cache, out, rows_per_file=4, run_info={})  # an earlier complete dataset: 4 shards
    write_part(cache, _records(15, 5))
    real_replace, calls = os.replace, []

    def dying_replace(src, dst):
        calls.append(dst)
        if len(calls) > crash_at:
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)

    monkeypatch.setattr(store.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        finalize(cache, out, rows_per_file=4, run_info={})
    monkeypatch.setattr(store.os, "replace", real_replace)
    # A half-finalized folder is never mistaken for a finished one: stats.json is written last.
    assert not (out / "__meta__" / "stats.json").exists()
    store.remove_stale_temps(cache, out)
    stats = finalize(cache, out, rows_per_file=4, run_info={})
    frame = pd.read_parquet(out)
    assert sorted(frame.problem_id.astype(int)) == list(range(20)) and stats["samples"] == 20
    assert sorted(p.name for p in out.glob("data-*.parquet")) == [f"data-{i:05d}-of-00005.parquet" for i in range(5)]
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_second_run_on_the_same_folder_is_refused(tmp_path: Path):
    source = write_jsonl(tmp_path / "p.jsonl", [{"question": "1 + 1?", "answer": "2"}])
    out = tmp_path / "out"
    (out / ".cache").mkdir(parents=True)
    with LoopbackTeacher(_slow_sum) as teacher, run_lock(out / ".cache"):
        with pytest.raises(SpecError, match="another distill run"):
            with run_lock(out / ".cache"):
                pass
        spec = write_spec(tmp_path / "p.yaml", source, teacher={"base_url": teacher.base_url})
        result = run_distill("run", spec, "--out", out, check=False)
        assert not teacher.requests
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {out / '.cache'}: another distill run (pid {os.getpid()}) is using this folder; wait for it "
        "to finish, or give this run another --out or --cache-dir")
    assert sorted(p.name for p in out.rglob("*")) == [".cache", "run.lock"]


def test_a_rerun_asks_again_for_what_the_teacher_failed_and_keeps_one_version(tmp_path: Path):
    """A teacher outage during a run: the rerun regenerates only the failed problems; each sample once."""
    rows = [{"question": f"What is {i} + {i + 2}?" + (" DOWN" if i % 3 == 0 else ""), "answer": str(2 * i + 2)}
            for i in range(9)]
    source = write_jsonl(tmp_path / "sums.jsonl", rows)
    out = tmp_path / "out"
    with LoopbackTeacher(_slow_sum, faults=FaultPlan(always={"DOWN": "http_503"})) as failing:
        spec = write_spec(tmp_path / "sums.yaml", source, teacher={"base_url": failing.base_url, "max_retries": 0})
        first = run_distill("run", spec, "--out", out)
    assert '"teacher_error": 6' in first.stdout  # 3 problems x 2 samples
    with LoopbackTeacher(_slow_sum) as healthy:
        run_distill("run", spec, "--out", out, "--teacher-url", healthy.base_url)
        asked = sorted(int(re.findall(r"\d+", r["messages"][-1]["content"])[0]) for r in healthy.requests)
        run_distill("run", spec, "--out", out, "--teacher-url", healthy.base_url)  # nothing left to ask
        assert len(healthy.requests) == len(asked)
    assert asked == [0, 3, 6]
    frame = pd.read_parquet(out)
    assert len(frame) == 9 * SAMPLES and not frame.duplicated(["problem_id", "sample_index"]).any()
    assert frame.kept.all() and frame.error.isna().all()
    stats = json.loads((out / "__meta__" / "stats.json").read_text())
    assert stats["samples"] == 18 and stats["reasons"] == {"kept": 18} and stats["runs"] == 3
