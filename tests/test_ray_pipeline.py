"""`distill run` with `run.engine: ray` on a real Ray cluster on this machine: a head and two worker nodes
(`ray.cluster_utils.Cluster`, the same raylet and GCS processes as `ray start`), simulated vLLM teachers.

Generation, curation and writing run as several actors spread over the two workers; every problem is written
exactly once and the rows are those of `engine: local`; a worker node killed mid-run stops the run in one line,
and the rerun on the cluster that is left writes exactly the missing problems."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import DISTILL, ROOT, run_distill, wait_for
from test_throughput_pipeline import problems_file, samples_per_problem

pytestmark = pytest.mark.slow
try:
    import ray  # noqa: F401 - the dev extra installs it (pyproject: distill-factory[ray])
except ImportError:
    if os.environ.get("CI"):
        raise  # `make setup` installs it: missing in CI is a failure, not a skip
    pytest.skip("ray is not installed: `make setup` (or pip install -e '.[ray]') installs it",
                allow_module_level=True)

MB = 2**20
# Rows must match these columns between engines (nothing here is a timing).
COMPARED = ["problem_id", "problem_index", "sample_index", "problem", "gold", "completion", "thought", "answer",
            "correct", "kept", "rejection_reason", "finish_reason", "completion_tokens", "prompt_tokens",
            "pass_rate", "teacher_model"]
# Each node: 2 logical CPUs, a small object store; failures detected within ~2 s (Ray's default is ~30 s).
NODE = {"num_cpus": 2, "object_store_memory": 80 * MB}
HEAD = {"num_cpus": 0, "include_dashboard": False, "object_store_memory": 80 * MB,
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                           "health_check_initial_delay_ms": 0}}
RAY_STEPS = {"generate": {"replicas": 2, "cpus": 0.25}, "curate": {"replicas": 2, "cpus": 0.25},
             "write": {"replicas": 2, "cpus": 0.25}}
# Stopping and resuming: two generation copies (one per worker node: the node killed holds one), fewer actors
# to start on each of the three runs.
STOP_STEPS = {"generate": {"replicas": 2, "cpus": 0.25}, "curate": {"cpus": 0.25}, "write": {"cpus": 0.25}}


class RayCluster:
    def __init__(self) -> None:
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(initialize_head=True, connect=False, head_node_args=HEAD)
        self.workers = [self.cluster.add_node(**NODE) for _ in range(2)]
        self.cluster.wait_for_nodes()

    @property
    def address(self) -> str:
        return self.cluster.address

    def actors(self) -> list[dict[str, Any]]:
        """Every actor the cluster has seen (dead ones too: the GCS keeps them), read by a short-lived driver."""
        script = (f"import json, ray; from ray._private import state; ray.init(address={self.address!r}, "
                  "log_to_driver=False, logging_level='ERROR'); print(json.dumps([{'name': a['Name'], "
                  "'node': a['Address']['NodeID'], 'state': a['State']} for a in state.actors().values()]))")
        out = subprocess.run([DISTILL[0], "-c", script], capture_output=True, text=True, timeout=120, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def worker_ids(self) -> list[str]:
        return [node.node_id for node in self.workers]

    def shutdown(self) -> None:
        self.cluster.shutdown()


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    ray_cluster = RayCluster()
    try:
        yield ray_cluster
    finally:
        ray_cluster.shutdown()


@contextlib.contextmanager
def two_teachers(slots: int = 3) -> Iterator[list[Any]]:
    """Two simulated vLLM servers; ~0.5 s a sequence, so that a run can be stopped midway. The answers depend
    on the prompt only (not on ``slots``), so every run here gets the same rows."""
    from test_teacher_sim import sim

    config = sim.SimConfig(slots=slots, median_s=0.4, sigma=1.0, cap_s=1.2)
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(sim.SimThread(config)) for _ in range(2)]


def spec_for(path: Path, source: Path, urls: list[str], concurrency: int = 3, **run: Any) -> Path:
    from conftest import write_spec

    return write_spec(path, source, teacher={"base_url": urls, "model": "sim-teacher", "num_samples": 2,
                                             "max_new_tokens": 100_000, "max_concurrency": concurrency},
                      verification="exact", dedupe={"enabled": False}, run={"batch_size": 4, **run})


def rows(out: Path) -> pd.DataFrame:
    frame = pd.read_parquet(out)[COMPARED]
    return frame.sort_values(["problem_id", "sample_index"], key=lambda c: c.astype(str)).reset_index(drop=True)


@pytest.fixture(scope="module")
def runs(cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same 40 problems through `engine: local` and through `engine: ray` with two copies of each stage."""
    tmp = tmp_path_factory.mktemp("ray-runs")
    source = problems_file(tmp / "problems.jsonl", 40)
    with two_teachers() as servers:
        urls = [s.base_url for s in servers]
        local = spec_for(tmp / "local.yaml", source, urls)
        run_distill("run", local, "--out", tmp / "local")
        before = [s.stats()["requests"] for s in servers]
        ray_spec = spec_for(tmp / "ray.yaml", source, urls, engine="ray", steps=RAY_STEPS)
        started = time.monotonic()
        result = run_distill("run", ray_spec, "--out", tmp / "ray", "--ray-address", cluster.address, timeout=240)
        seconds = time.monotonic() - started
        requests = [s.stats()["requests"] - b for s, b in zip(servers, before, strict=True)]
    return {"local": tmp / "local", "ray": tmp / "ray", "result": result, "requests": requests,
            "actors": cluster.actors(), "seconds": seconds, "source": source}


def test_ray_replicas_run_on_both_workers_and_write_every_problem_once(runs, cluster):
    assert "wrote" in runs["result"].stdout and "40 problems" in runs["result"].stdout
    assert samples_per_problem(runs["ray"]) == {str(i): [0, 1] for i in range(40)}
    assert sum(runs["requests"]) == 40 and min(runs["requests"]) >= 10, runs["requests"]  # both teachers
    placed: dict[str, set[str]] = {}
    for actor in runs["actors"]:
        for stage in ("generate", "curate", "write"):
            if actor["name"].startswith(f"distilabel-distill-ray-{stage}-"):
                placed.setdefault(stage, set()).add(actor["node"])
    workers = set(cluster.worker_ids())
    assert placed == {"generate": workers, "curate": workers, "write": workers}, (placed, workers)
    parts = list((runs["ray"] / ".cache" / "parts").glob("part-*.parquet"))
    assert len(parts) >= 4  # written by two write actors, whole problems each
    assert not (runs["ray"] / ".cache" / "run.lease").exists()  # released


def test_ray_engine_writes_the_same_rows_as_the_local_engine(runs):
    local, on_ray = rows(runs["local"]), rows(runs["ray"])
    assert len(local) == 80
    pd.testing.assert_frame_equal(local, on_ray)


def _start(spec: Path, out: Path, address: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*DISTILL, "run", str(spec), "--out", str(out), "--ray-address", address,
                             "--progress-every", "1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ}, start_new_session=True)


def _parts(out: Path) -> list[Path]:
    return sorted((out / ".cache" / "parts").glob("part-*.parquet"))


def _stop_midway(proc: subprocess.Popen[str], out: Path, after_parts: int, stop: Any) -> str:
    """Once ``after_parts`` part files exist, ``stop()``; the run's stderr once it has exited."""
    try:
        wait_for(lambda: len(_parts(out)) >= after_parts or proc.poll() is not None, 180, f"{after_parts} parts")
        assert proc.poll() is None, proc.communicate()
        stop()
        return proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _written(out: Path) -> set[str]:
    return {pid for part in _parts(out) for pid in pd.read_parquet(part)["problem_id"]}


def test_ray_run_stopped_by_sigterm_then_by_a_killed_worker_node_resumes_every_problem_exactly_once(
        runs, cluster, tmp_path):
    source = problems_file(tmp_path / "problems.jsonl", 40)  # the same problems as `runs`
    out = tmp_path / "out"
    with two_teachers() as servers:
        # one request in flight per replica: slow enough to be caught midway, with most problems still to do
        spec = spec_for(tmp_path / "ray.yaml", source, [s.base_url for s in servers], concurrency=1, engine="ray",
                        steps=STOP_STEPS)
        # 1. SIGTERM (Slurm, Kubernetes): a graceful stop, as on the local engine
        proc = _start(spec, out, cluster.address)
        stderr = _stop_midway(proc, out, 2, lambda: proc.send_signal(signal.SIGTERM))
        assert proc.returncode == 143, stderr[-3000:]
        assert stderr.strip().splitlines()[-1] == "error: interrupted; rerun the same command to resume"
        assert not list((out / ".cache" / "parts").glob(".*.tmp"))  # the writers finished their parts
        assert not (out / ".cache" / "run.lease").exists()
        first = _written(out)
        assert 0 < len(first) < 40
        # 2. the rerun loses a worker node (raylet and every worker on it SIGKILLed)
        proc = _start(spec, out, cluster.address)
        victim = cluster.workers.pop()
        stderr = _stop_midway(proc, out, len(_parts(out)) + 1,
                              lambda: cluster.cluster.remove_node(victim, allow_graceful=False))
        assert proc.returncode == 2, stderr[-3000:]
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("error: a Ray worker died: stage '") and "rerun the same command" in last, last
        second = _written(out)
        assert first < second and len(second) < 40
        # 3. a replacement node joins; the rerun (at full speed: concurrency is not part of a sample) asks for
        #    exactly the problems not written
        cluster.workers.append(cluster.cluster.add_node(**NODE))
        spec = spec_for(tmp_path / "ray.yaml", source, [s.base_url for s in servers], engine="ray", steps=STOP_STEPS)
        before = sum(s.stats()["requests"] for s in servers)
        run_distill("run", spec, "--out", out, "--ray-address", cluster.address, timeout=240)
        asked = sum(s.stats()["requests"] for s in servers) - before
    assert asked == 40 - len(second)
    assert samples_per_problem(out) == {str(i): [0, 1] for i in range(40)}
    pd.testing.assert_frame_equal(rows(runs["local"]), rows(out))


def _ray_daemons() -> set[int]:
    import psutil

    return {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] in ("raylet", "gcs_server")}


def test_ray_engine_without_an_address_starts_its_own_ray_and_leaves_nothing_running(runs, tmp_path):
    source = problems_file(tmp_path / "problems.jsonl", 12)
    before = _ray_daemons()
    with two_teachers() as servers:
        spec = spec_for(tmp_path / "own.yaml", source, [s.base_url for s in servers], engine="ray",
                        steps={"generate": {"replicas": 2, "cpus": 0.5}})
        result = run_distill("run", spec, "--out", tmp_path / "out", timeout=240)
    assert "12 problems" in result.stdout
    assert samples_per_problem(tmp_path / "out") == {str(i): [0, 1] for i in range(12)}
    local = rows(runs["local"])
    pd.testing.assert_frame_equal(local[local["problem_index"] < 12].reset_index(drop=True), rows(tmp_path / "out"))
    wait_for(lambda: not (_ray_daemons() - before), 30, "the run's own Ray to stop")
