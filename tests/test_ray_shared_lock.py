"""The run lease on shared storage (pipelines/run/shared_lock.py), with real processes and real files: one holder,
a live holder named, a killed holder taken over at once on its host and after the TTL from another host, a
taken-over holder told so, and two waiters racing for a stale lease never both winning. Plus the spec's
`run.engine` / `run.steps` validation, one line each."""

from __future__ import annotations

import json
import multiprocessing
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.run.shared_lock import LEASE_NAME, acquire, read_lease, shared_lock
from pipelines.spec import SpecError

HOLD = ("import sys, time; from pathlib import Path; from pipelines.run.shared_lock import acquire; "
        "acquire(Path(sys.argv[1]), beat_s=0.2); print('held', flush=True); time.sleep(600)")


def _holder(cache: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(cache)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_holder_is_named_and_a_killed_one_is_taken_over_at_once(tmp_path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(SpecError, match=rf"another distill run \(host .+, pid {holder.pid}\) is using"):
            acquire(tmp_path, ttl_s=60)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert read_lease(tmp_path / LEASE_NAME)["pid"] == holder.pid  # a kill -9 leaves the file behind
    started = time.monotonic()
    with shared_lock(tmp_path, ttl_s=60) as lease:  # same host, dead pid: no TTL wait
        assert time.monotonic() - started < 2
        assert read_lease(tmp_path / LEASE_NAME)["token"] == lease.data["token"]
    assert not (tmp_path / LEASE_NAME).exists()  # released


def _foreign_lease(path: Path, beat: int = 0) -> None:
    path.write_text(json.dumps({"host": "gpu-node-17", "pid": 4242, "token": "t-other", "beat": beat}))


def test_another_hosts_lease_is_live_while_it_beats_and_stale_after_the_ttl(tmp_path):
    path = tmp_path / LEASE_NAME
    _foreign_lease(path)
    stop = time.monotonic() + 30

    def beat() -> None:  # the other host's heartbeat, as its lease file sees it
        n = 0
        while time.monotonic() < stop and path.exists():
            n += 1
            _foreign_lease(path, n)
            time.sleep(0.1)

    import threading

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    with pytest.raises(SpecError, match=r"host gpu-node-17, pid 4242"):
        acquire(tmp_path, ttl_s=5)
    stop = 0.0
    thread.join()
    _foreign_lease(path, 99)  # its host died: the beat stops moving
    started = time.monotonic()
    lease = acquire(tmp_path, ttl_s=1.0)
    waited = time.monotonic() - started
    lease.release()
    assert 1.0 <= waited < 5, waited
    assert not list(tmp_path.glob(".run.lease*"))  # nothing of the broken lease is left


def test_a_holder_whose_lease_was_taken_over_knows_it(tmp_path):
    lease = acquire(tmp_path, beat_s=0.1)
    try:
        _foreign_lease(tmp_path / LEASE_NAME)  # another host broke it (this one was partitioned)
        assert lease.lost.wait(5)
    finally:
        lease.release()
    assert read_lease(tmp_path / LEASE_NAME)["token"] == "t-other"  # release leaves the new holder's lease


def _race(cache: str, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    try:
        lease = acquire(Path(cache), beat_s=0.2, ttl_s=0.5)
    except SpecError:
        results.put("refused")
        return
    results.put("won")
    time.sleep(3)
    lease.release()


def test_waiters_racing_for_a_stale_lease_never_both_win(tmp_path):
    _foreign_lease(tmp_path / LEASE_NAME, 7)  # stale: nobody beats it
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    racers = [context.Process(target=_race, args=(str(tmp_path), results)) for _ in range(4)]
    for racer in racers:
        racer.start()
    outcomes = sorted(results.get(timeout=60) for _ in racers)
    for racer in racers:
        racer.join(timeout=30)
    assert outcomes == ["refused", "refused", "refused", "won"], outcomes


@pytest.mark.parametrize("run,message", [
    ({"steps": {"curate": {"cpus": 0.5}}}, "run: steps.curate.cpus: only with engine: ray"),
    ({"ray_address": "auto"}, "run: ray_address: only with engine: ray"),
    ({"engine": "spark"}, "run.engine: Input should be 'local' or 'ray'"),
    ({"engine": "ray", "steps": {"prm": {"gpus": -1}}},
     "run.steps.prm.gpus: Input should be greater than or equal to 0"),
    ({"engine": "ray", "steps": {"generate": {"replica": 2}}}, "run.steps.generate.replica: unknown key"),
    ({"engine": "ray", "steps": {"load": {"replicas": 2}}}, "run.steps.load: unknown key"),
    ({"steps": {"generate": {"replicas": 2}}}, "run: generate_replicas > 1 needs dispatch: batch or engine: ray"),
    ({"engine": "ray", "generate_replicas": 3, "steps": {"generate": {"replicas": 2}}},
     "run: generate_replicas (3) and steps.generate.replicas (2) disagree"),
])
def test_run_engine_and_steps_errors_are_one_line_naming_the_field(tmp_path, run, message):
    from conftest import write_spec

    from pipelines.spec import load_spec

    spec = write_spec(tmp_path / "spec.yaml", tmp_path / "p.jsonl", run=run)
    with pytest.raises(SpecError) as error:
        load_spec(str(spec))
    line = str(error.value)
    assert "\n" not in line and f"spec.yaml: {message}" in line, line


def test_ray_address_flag_selects_the_ray_engine_and_a_bad_combination_is_one_line(tmp_path):
    from conftest import run_distill, write_jsonl, write_spec

    source = write_jsonl(tmp_path / "p.jsonl", [{"question": "1+1?", "answer": "2"}])
    spec = write_spec(tmp_path / "spec.yaml", source, run={"engine": "ray", "steps": {"generate": {"replicas": 2}}})
    result = run_distill("run", spec, "--out", tmp_path / "out", "--engine", "local", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --engine: run: generate_replicas > 1 needs dispatch: batch or engine: ray (on one machine one "
        "window already fills the teacher)")
    assert not (tmp_path / "out").exists()
