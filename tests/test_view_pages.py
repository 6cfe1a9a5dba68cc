"""`distill view`'s pages without a browser: the queries, the filters' errors, secrets, eval folders, live folders,
and the command's one-line errors. Folders are written with pipelines.store, as `distill run` writes them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import run_distill

from distill.view.data import Database, Filters
from distill.view.server import Viewer
from pipelines.spec import SpecError
from pipelines.store import finalize, write_part

SPEC = """name: hand-made
source: {path: /home/ana/data/problems.jsonl, problem_field: question, answer_field: answer}
teacher: {model: /home/ana/models/r1-7b, base_url: "http://10.1.2.3:8000/v1", api_key_env: SECRET_KEY_VAR}
prm: {model: /home/ana/models/prm, style: math-shepherd, split: blank_lines, threshold: 0.5}
"""


def records(n_problems: int) -> list[dict[str, Any]]:
    rows = []
    for p in range(n_problems):
        for s in range(2):
            kept = (p + s) % 3 != 0
            thought = f"First, {p}+{p} (a+b)*c.\n\nThen {2 * p}.\n\nSo the answer is {2 * p}."
            rows.append({"problem_id": f"p{p}", "problem_index": p, "sample_index": s, "problem": f"What is {p}+{p}?",
                         "gold": str(2 * p), "thought": thought, "answer": f"\\boxed{{{2 * p}}}",
                         "correct": True, "kept": kept, "rejection_reason": None if kept else "prm",
                         "completion_tokens": 10 + p, "teacher_model": "/home/ana/models/r1-7b",
                         "pass_rate": 0.5, "step_scores": [0.9, 0.2 if not kept else 0.8, 0.7],
                         "prm_score": 0.2 if not kept else 0.7, "prm_first_error": None if kept else 1,
                         "messages": [{"role": "user", "content": "q"}]})
    return rows


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    out = tmp_path / "data"
    rows = records(30)
    for start in range(0, len(rows), 10):
        write_part(out / ".cache", rows[start:start + 10])
    finalize(out / ".cache", out, rows_per_file=25, run_info={"spec": "hand-made", "wall_time_s": 1.0,
                                                              "teacher_model": "/home/ana/models/r1-7b"})
    (out / "__meta__" / "spec.yaml").write_text(SPEC)
    return out


def get(viewer: Viewer, path: str, **query: Any) -> tuple[int, str]:
    status, _, body = viewer.handle(path, {k: str(v) for k, v in query.items()})
    return status, body.decode()


def test_filters_name_the_field_and_the_fix() -> None:
    for query, start in (({"pass_min": "abc"}, "pass_min: 'abc' is not a number"),
                         ({"status": "maybe"}, "status: 'maybe' is not one of all, kept, rejected"),
                         ({"sort": "thought"}, "sort: 'thought' is not one of"),
                         ({"prm_min": "0.9", "prm_max": "0.1"}, "prm_min: 0.9 is above prm_max 0.1; swap them"),
                         ({"page": "0"}, "page: '0' is not a page number")):
        with pytest.raises(SpecError, match="^" + start.replace("(", r"\(").replace(")", r"\)")):
            Filters.parse(query)


def test_queries_filter_sort_search_and_page(dataset: Path) -> None:
    frame = pd.read_parquet(dataset)
    db = Database()
    source = db.source(dataset)
    assert not source.live and len(source.files) == 3  # the shards, not the parts
    assert db.count(source, Filters()) == len(frame) == 60
    kept = Filters.parse({"status": "kept"})
    assert db.count(source, kept) == int(frame.kept.sum())
    assert all(r["kept"] for r in db.page(source, kept))
    ranged = Filters.parse({"prm_min": "0.5", "tokens_max": "20"})
    assert db.count(source, ranged) == int(((frame.prm_score >= 0.5) & (frame.completion_tokens <= 20)).sum())
    by_tokens = db.page(source, Filters.parse({"sort": "completion_tokens", "desc": "1"}))
    assert by_tokens[0]["completion_tokens"] == 39 and len(by_tokens) == 50
    # A search is literal (regex characters included) and case-insensitive; paging through it reuses its scan.
    search = Filters.parse({"q": "(A+B)*C"})
    assert db.count(source, search) == 60
    page2 = db.page(source, Filters.parse({"q": "(A+B)*C", "page": "2"}))
    assert [(r["problem_index"], r["sample_index"]) for r in page2] == [(p, s) for p in range(25, 30) for s in (0, 1)]
    assert db.count(source, Filters.parse({"q": "what is 7+7?"})) == 2
    assert db.count(source, Filters.parse({"q": "100%"})) == 0
    samples = db.problem_samples(source, "p4")
    assert [s["sample_index"] for s in samples] == [0, 1] and list(samples[0]["step_scores"]) == [0.9, 0.8, 0.7]


def test_pages_show_steps_and_never_the_secrets(dataset: Path) -> None:
    viewer = Viewer(dataset)
    status, _, _ = viewer.handle("/", {})
    assert status == 302
    status, page = get(viewer, "/table", at=".", reason="prm")
    assert status == 200 and '<strong id="total">20</strong>' in page
    status, page = get(viewer, "/sample", at=".", pid="p3", s=0)  # rejected by the PRM at step 2
    assert status == 200 and page.count('class="step') >= 3 and "split: blank_lines" in page
    assert page.count('<span class="first-error-label">') == 1
    assert "hsl(96, 70%, 85%)" in page  # 0.8, a step of the other sample
    assert "r1-7b" in page and "/home/ana" not in page
    status, page = get(viewer, "/summary", at=".")
    assert status == 200 and "svg" in page and "SECRET_KEY_VAR" not in page and "10.1.2.3" not in page
    assert "/home/ana" not in page and "problems.jsonl" in page
    status, page = get(viewer, "/sample", at=".", pid="nope", s=0)
    assert status == 404 and "pid: no sample 0 of problem &#39;nope&#39;" in page
    status, page = get(viewer, "/table", at="../..")
    assert status == 404 and "at: &#39;../..&#39; is not a folder under" in page


def test_a_run_still_writing_is_read_from_its_part_files(tmp_path: Path) -> None:
    out = tmp_path / "run"
    viewer = Viewer(out.parent)
    rows = records(3)
    write_part(out / ".cache", rows[:2])
    db = Database()
    assert db.source(out).live and db.count(db.source(out), Filters()) == 2
    status, page = get(viewer, "/table", at="run")
    assert status == 200 and "run writing: 1 part files so far" in page
    write_part(out / ".cache", rows[2:])
    assert json.loads(get(viewer, "/api/count", at="run")[1]) == {"total": 6, "live": True, "files": 2}
    status, page = get(viewer, "/")
    assert "writing" in page and "run" in page


def test_a_rerun_of_a_finished_folder_is_live_while_it_holds_the_lock(dataset: Path) -> None:
    """stats.json is there from the first run; the run's flock (read from /proc/locks) says a run writes again."""
    import fcntl
    import os

    db = Database()
    assert not db.source(dataset).live
    fd = os.open(dataset / ".cache" / "run.lock", os.O_CREAT | os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        source = db.source(dataset)
        assert source.live and all(".cache/parts/part-" in str(f) for f in source.files)
    finally:
        os.close(fd)
    assert not db.source(dataset).live


def test_an_eval_folder_shows_its_report_plots_and_right_and_wrong(dataset: Path, tmp_path: Path) -> None:
    evaluation = tmp_path / "eval"
    run = evaluation / "runs" / "student" / "sums"
    shutil.copytree(dataset, run)
    frame = pd.read_parquet(run)
    (evaluation / "scores" / "student").mkdir(parents=True)
    scores = frame[["problem_id", "sample_index"]].assign(correct=frame.problem_index % 2 == 0)
    scores.to_parquet(evaluation / "scores" / "student" / "sums.parquet")
    (evaluation / "plots").mkdir()
    (evaluation / "plots" / "passk-sums.png").write_bytes(b"\x89PNG fake")
    (evaluation / "results.json").write_text(json.dumps({"models": {"student": {}}, "sets": {"sums": {}}}))
    (evaluation / "report.md").write_text("# distill eval\n\n| set | student |\n|---|---|\n| sums | 50.0 |\n\n"
                                          "3 problems from `/home/ana/sets/sums.jsonl`.\n\n"
                                          "![pass@k](plots/passk-sums.png)\n")
    viewer = Viewer(tmp_path)
    status, page = get(viewer, "/eval", at="eval")
    assert status == 200 and "<table>" in page and "<td>50.0</td>" in page
    assert "/home/ana" not in page and "<code>sums.jsonl</code>" in page
    assert 'src="/plot?at=eval&amp;name=plots/passk-sums.png"' in page
    assert '">30</a>' in page  # right and wrong: 30 each, linked to the run's filtered table
    status, kind, body = viewer.handle("/plot", {"at": "eval", "name": "plots/passk-sums.png"})
    assert (status, kind, body) == (200, "image/png", b"\x89PNG fake")
    assert viewer.handle("/plot", {"at": "eval", "name": "../results.json"})[0] == 404
    status, page = get(viewer, "/table", at="eval/runs/student/sums", right="no")
    assert status == 200 and '<strong id="total">30</strong>' in page and page.count('badge wrong') == 30
    status, page = get(viewer, "/")
    assert 'href="/eval?at=eval"' in page and "runs/student" not in page  # the eval's runs are on its page


def test_a_folder_with_few_columns_still_shows(tmp_path: Path) -> None:
    """A parquet folder from elsewhere (only some of the factory's columns) pages and shows its samples."""
    out = tmp_path / "foreign"
    out.mkdir()
    pd.DataFrame({"problem_id": ["a", "a", "b"], "problem_index": [0, 0, 1], "sample_index": [0, 1, 0],
                  "problem": ["x?", "x?", "y?"], "thought": ["one\n\ntwo", "three", None]}).to_parquet(
        out / "data-00000-of-00001.parquet")
    viewer = Viewer(out)
    status, page = get(viewer, "/table", at=".", q="TWO")
    assert status == 200 and '<strong id="total">1</strong>' in page
    status, page = get(viewer, "/sample", at=".", pid="a", s=0)
    assert status == 200 and page.count('<div class="step"') == 3 and "not verified" in page  # 2 + its sibling's 1
    status, page = get(viewer, "/summary", at=".")
    assert status == 200 and "<strong>3</strong> samples of 2 problems" in page


@pytest.mark.parametrize(("args", "message"), [
    (["/no/such/folder"], "error: PATH: /no/such/folder is not a folder"),
    ([".", "--host", "my-laptop"], "error: --host: 'my-laptop' is not an IP address"),
    ([".", "--port", "70000"], "error: --port: 70000 is not a port"),
])
def test_bad_input_is_one_line(args: list[str], message: str) -> None:
    result = run_distill("view", *args, check=False, timeout=60)
    assert result.returncode == 2 and result.stderr.strip().startswith(message)
    assert len(result.stderr.strip().splitlines()) == 1
