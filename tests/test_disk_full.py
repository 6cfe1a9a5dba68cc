"""A full disk (ENOSPC) while writing parts or shards: one line, no corrupt or half file, and the rerun resumes.

The end-to-end test mounts a small tmpfs (root only; skipped elsewhere) and fills it in the middle of a run;
the unit tests inject the failure into pyarrow's writes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import DISTILL, ROOT, run_distill, wait_for, write_jsonl, write_spec

import pipelines.store as store
from pipelines.errors import error_line
from pipelines.store import finalize, part_files, write_part
from testing.loopback.teacher import LoopbackTeacher

PROBLEMS = 40


def _records(first: int, count: int) -> list[dict]:
    return [{"problem_id": str(i), "problem_index": i, "sample_index": 0, "problem": f"p{i}", "gold": "1",
             "kept": True, "rejection_reason": None, "completion_tokens": 3} for i in range(first, first + count)]


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")


def test_a_part_that_hits_a_full_disk_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    write_part(tmp_path, _records(0, 3))
    monkeypatch.setattr(store.pq, "write_table", _enospc)
    with pytest.raises(OSError) as full:
        write_part(tmp_path, _records(3, 3))
    assert error_line(full.value) == (f"{tmp_path / 'parts'}: no space left on device; free some space, then rerun "
                                      "the same command to resume")
    assert [p.name for p in (tmp_path / "parts").iterdir()] == [part_files(tmp_path)[0].name]


def test_shards_that_hit_a_full_disk_leave_the_old_ones_and_no_half_file(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch):
    cache, out = tmp_path / "cache", tmp_path / "out"
    write_part(cache, _records(0, 6))
    finalize(cache, out, rows_per_file=4, run_info={})
    before = {p.name: p.read_bytes() for p in out.glob("data-*.parquet")}
    write_part(cache, _records(6, 6))
    monkeypatch.setattr(store.pq.ParquetWriter, "write_table", _enospc)
    with pytest.raises(OSError) as full:
        finalize(cache, out, rows_per_file=4, run_info={})
    assert error_line(full.value).startswith(f"{out}: no space left on device; free some space")
    assert {p.name: p.read_bytes() for p in out.glob("data-*.parquet")} == before
    assert not list(out.glob(".*.tmp")) and not (out / "__meta__" / "stats.json").exists()  # not complete
    monkeypatch.undo()
    assert finalize(cache, out, rows_per_file=4, run_info={})["samples"] == 12


def _sum(messages: list[dict[str, str]], index: int) -> str:
    time.sleep(0.05)
    a, b = map(int, re.findall(r"\d+", messages[-1]["content"])[:2])
    return f"<thought>Add {a} and {b}.\n\nThat makes {a + b}.</thought>\\boxed{{{a + b}}}"


@pytest.fixture()
def small_disk(tmp_path: Path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> Path:
    """Take every free byte of the file system."""
    filler = folder / f"filler-{uuid.uuid4().hex[:6]}"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 16, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


def test_a_run_on_a_disk_that_fills_up_stops_in_one_line_and_resumes(tmp_path: Path, small_disk: Path):
    source = write_jsonl(tmp_path / "sums.jsonl", [{"question": f"What is {i} + {i + 2}?", "answer": str(2 * i + 2)}
                                                   for i in range(PROBLEMS)])
    out = small_disk / "out"
    cache = out / ".cache"
    with LoopbackTeacher(_sum) as teacher:
        spec = write_spec(tmp_path / "sums.yaml", source,
                          teacher={"base_url": teacher.base_url, "num_samples": 2, "max_concurrency": 2},
                          run={"batch_size": 4})
        proc = subprocess.Popen([*DISTILL, "run", str(spec), "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            wait_for(lambda: len(part_files(cache)) >= 2 or proc.poll() is not None, 240, "two part files")
            filler = _fill(small_disk)
            stdout, stderr = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)  # its workers die with it
                print(proc.communicate()[1][-5000:])
        assert proc.returncode == 2, stderr[-3000:]
        assert [line for line in stderr.splitlines() if line.startswith("error") or "Error" in line] == [
            f"error: {cache / 'parts'}: no space left on device; free some space, then rerun the same command to "
            "resume"], stderr[-3000:]
        assert "Traceback" not in stderr, stderr[-3000:]
        ids = [pid for part in part_files(cache) for pid in set(pq.read_table(part).column("problem_id").to_pylist())]
        assert 0 < len(ids) < PROBLEMS and len(ids) == len(set(ids))  # every part readable, none twice
        assert not [p for p in out.rglob("*.tmp") if "distilabel" not in p.parts]
        filler.unlink()
        before = len(teacher.requests)
        result = run_distill("run", spec, "--out", out)
        asked = sorted(int(re.findall(r"What is (\d+)", r["messages"][-1]["content"])[0])
                       for r in teacher.requests[before:])
    assert asked == sorted(i for i in range(PROBLEMS) if str(i) not in set(ids))
    frame = pd.read_parquet(out)
    assert len(frame) == PROBLEMS * 2 and not frame.duplicated(["problem_id", "sample_index"]).any()
    assert f"{PROBLEMS * 2} samples of {PROBLEMS} problems" in result.stdout
    shutil.rmtree(out)
