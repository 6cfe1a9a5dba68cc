"""Bad input: one clear line naming the field or file and what to do, a non-zero exit, and nothing damaged.

Every case runs the real CLI against the folder of an earlier, finished run and checks that folder is
byte-for-byte what it was.
"""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import run_distill, write_jsonl, write_spec

from pipelines.errors import RunIncomplete, error_line
from pipelines.run.plan import make_plan
from pipelines.run.runner import _check_complete
from pipelines.spec import DatasetSpec
from pipelines.store import write_part
from testing.loopback.teacher import LoopbackTeacher

ROWS = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(6)]


def _answer(messages: list[dict[str, str]], index: int) -> str:
    return "<thought>Double it.\n\nDone.</thought>\\boxed{0}"


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A finished dataset folder, and a teacher that stays up for the cases that need one."""
    root = tmp_path_factory.mktemp("bad-input")
    source = write_jsonl(root / "good.jsonl", ROWS)
    with LoopbackTeacher(_answer) as teacher:
        spec = write_spec(root / "good.yaml", source, teacher={"base_url": teacher.base_url})
        out = root / "out"
        run_distill("run", spec, "--out", out)
        yield {"root": root, "source": source, "out": out, "url": teacher.base_url, "tree": _tree(out)}


def _fails(finished: dict[str, Any], spec: Path, *extra: str) -> str:
    """Run against the finished folder; returns the single error line after checking exit code and folder."""
    result = run_distill("run", spec, "--out", finished["out"], *extra, check=False)
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert _tree(finished["out"]) == finished["tree"], "a failed run changed the finished dataset"
    return lines[0].removeprefix("error: ")


def _spec(finished: dict[str, Any], name: str, source: Path | dict | None = None, **sections: Any) -> Path:
    """A spec for the running teacher; ``source`` is a file or a whole source section, sections are merged."""
    spec: dict[str, Any] = {
        "name": name,
        "source": source if isinstance(source, dict) else {"path": str(source or finished["source"]),
                                                           "problem_field": "question", "answer_field": "answer"},
        "teacher": {"model": "loopback-teacher", "base_url": finished["url"], "num_samples": 1, "max_new_tokens": 64},
    }
    for key, value in sections.items():
        spec[key] = {**spec.get(key, {}), **value}
    path = finished["root"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def test_wrong_type(finished):
    line = _fails(finished, _spec(finished, "wrong-type", teacher={"num_samples": "many"}))
    assert line.endswith("wrong-type.yaml: teacher.num_samples: Input should be a valid integer, unable to parse "
                         "string as an integer")


def test_unknown_key(finished):
    line = _fails(finished, _spec(finished, "typo", teacher={"temprature": 0.7}))
    assert line.endswith("typo.yaml: teacher.temprature: unknown key (remove it or check its spelling)")


def test_missing_field_mapping(finished):
    path = finished["root"] / "no-path.yaml"
    path.write_text(yaml.safe_dump({"name": "no-path", "source": {"problem_field": "question"}}))
    assert _fails(finished, path).endswith("no-path.yaml: source.path: missing (add it to the spec)")
    spec = _spec(finished, "no-mapping", source={"path": str(finished["source"]), "answer_field": "answer"})
    assert _fails(finished, spec) == ("source.problem_field: column 'problem' is not in the source "
                                      "(columns: answer, question)")


def test_source_file_that_does_not_exist(finished):
    missing = finished["root"] / "nowhere.jsonl"
    line = _fails(finished, _spec(finished, "missing-file", source=missing))
    assert line == f"source.path: file '{missing}' does not exist; check the path in the spec"


def test_column_not_in_source(finished):
    spec = _spec(finished, "bad-column", source={"path": str(finished["source"]), "problem_field": "question",
                                                 "answer_field": "solution"})
    assert _fails(finished, spec) == ("source.answer_field: column 'solution' is not in the source "
                                      "(columns: answer, question)")


@pytest.mark.parametrize("content", [b"", b"\n\n", b'{"question": "  ", "answer": "1"}\n'])
def test_empty_dataset(finished, content: bytes):
    empty = finished["root"] / "empty.jsonl"
    empty.write_bytes(content)
    line = _fails(finished, _spec(finished, "empty", source=empty))
    assert line == (f"source.path: '{empty}' has no problems in field 'question'; check the file or "
                    "source.problem_field")


def test_problem_of_one_megabyte(finished):
    big = write_jsonl(finished["root"] / "big.jsonl",
                      [ROWS[0], {"question": "x" * 2**20, "answer": "1"}, ROWS[1]])
    line = _fails(finished, _spec(finished, "big", source=big))
    assert line == (f"source.max_problem_chars: problem '1' of {big} has 1,048,576 characters (limit 100,000); "
                    "fix that row or raise the limit")


def test_non_utf8_source_and_spec(finished):
    latin = finished["root"] / "latin1.jsonl"
    latin.write_bytes(b'{"question": "1 + 1?", "answer": "2"}\n{"question": "caf\xe9 + 1?", "answer": "2"}\n')
    line = _fails(finished, _spec(finished, "latin", source=latin))
    assert line == (f"{latin}:2: not UTF-8 (byte 0xe9 at column 18); re-encode the file as UTF-8, "
                    "e.g. iconv -f latin1 -t utf-8")
    spec = finished["root"] / "latin-spec.yaml"
    spec.write_bytes(b"name: caf\xe9\nsource: {path: x.jsonl}\n")
    assert _fails(finished, spec) == f"{spec}: not UTF-8 text; save the spec as UTF-8"


def test_not_json_and_not_yaml(finished):
    broken = finished["root"] / "broken.jsonl"
    broken.write_text('{"question": "1 + 1?", "answer": "2"}\n{"question": \n')
    line = _fails(finished, _spec(finished, "broken", source=broken))
    assert line.startswith(f"{broken}:2: not valid JSON (") and line.endswith("); fix or remove that line")
    spec = finished["root"] / "bad.yaml"
    spec.write_text("name: [unclosed\n")
    assert _fails(finished, spec).startswith(f"{spec}: invalid YAML (")


def test_duplicate_ids(finished):
    dupes = write_jsonl(finished["root"] / "dupes.jsonl", [{**ROWS[0], "id": "a"}, {**ROWS[1], "id": "a"}])
    spec = _spec(finished, "dupes", source={"path": str(dupes), "problem_field": "question", "id_field": "id"})
    assert _fails(finished, spec) == (f"source.id_field: id 'a' appears twice in {dupes}; ids must be unique "
                                      "(fix the data, or drop id_field to number the rows)")


def test_unreachable_teacher(finished):
    port = _free_port()  # bound then closed: nothing listens there
    # One problem more than the finished folder holds: there is work for the teacher. (A rerun with nothing
    # left to generate needs no teacher and only rewrites the dataset: see test_publish.)
    more = write_jsonl(finished["root"] / "more.jsonl", [*ROWS, {"question": "What is 6 + 6?", "answer": "12"}])
    spec = _spec(finished, "offline", source=more, teacher={"base_url": f"http://127.0.0.1:{port}/v1"})
    assert _fails(finished, spec) == (f"teacher.base_url: cannot reach http://127.0.0.1:{port}/v1 (connection "
                                      "refused); start the vLLM server or fix --teacher-url")
    fresh = finished["root"] / "fresh-out"  # a new folder is not even created
    assert run_distill("run", spec, "--out", fresh, check=False).returncode == 2 and not fresh.exists()
    # The same from the command line, and a flag value that is not a URL.
    fine = _spec(finished, "fine", source=more)
    assert _fails(finished, fine, "--teacher-url", f"http://127.0.0.1:{port}/v1").startswith(
        f"teacher.base_url: cannot reach http://127.0.0.1:{port}/v1 (connection refused)")
    assert _fails(finished, fine, "--teacher-url", "localhost:8000") == (
        "--teacher-url: not a URL: 'localhost:8000' (expected http://host:port/v1)")


def test_spec_paths_cannot_leave_the_working_directory(finished):
    for name, output, expected in [
        ("escape", {"dir": "../../escaped"}, "output.dir: '../../escaped' must be a relative path inside the working "
                                             "directory (or use --out)"),
        ("absolute", {"dir": "/tmp/escaped"}, "output.dir: '/tmp/escaped' must be a relative path inside the "
                                              "working directory (or use --out)"),
    ]:
        spec = _spec(finished, name, output=output)
        result = run_distill("run", spec, check=False)
        assert result.returncode == 2 and result.stderr.strip().endswith(f"{name}.yaml: {expected}")
    spec = finished["root"] / "slash.yaml"
    spec.write_text(yaml.safe_dump({"name": "../../etc", "source": {"path": str(finished["source"])}}))
    line = _fails(finished, spec)
    assert line.endswith("slash.yaml: name: '../../etc': use letters, digits, '.', '_' and '-' only (it names the "
                         "output folder)")
    assert not (finished["root"].parent / "escaped").exists() and not Path("/tmp/escaped").exists()


def test_a_run_that_ends_short_says_so(tmp_path: Path):
    """distilabel replaces a failed batch with None rows and goes on: the run must not finish quietly short."""
    source = write_jsonl(tmp_path / "p.jsonl", ROWS)
    spec = DatasetSpec.model_validate({"name": "short", "source": {"path": str(source),
                                                                   "problem_field": "question"}})
    cache = tmp_path / "cache"
    write_part(cache, [{"problem_id": str(i), "problem_index": i, "sample_index": 0, "problem": "p", "gold": "0",
                        "kept": True, "rejection_reason": None} for i in range(4)])
    plan = make_plan(spec, None, None)
    with pytest.raises(RunIncomplete) as raised:
        _check_complete(plan, cache)
    assert str(raised.value) == (f"2 of 6 problems were not written (a pipeline step failed; see "
                                 f"{cache / 'run.log'}); rerun the same command to retry them")
    _check_complete(make_plan(spec, 4, None), cache)  # complete: nothing raised


def test_unexpected_errors_are_one_line_without_secrets():
    assert error_line(RuntimeError("boom sk-live-123456\nat line 2"), secrets=["sk-live-123456"]) == (
        "RuntimeError: boom *** (rerun the same command to resume; --verbose shows the traceback)")
    assert error_line(PermissionError(13, "Permission denied", "/data/out")) == (
        "/data/out: permission denied; choose a folder you can write (--out, --cache-dir)")
    assert error_line(OSError(28, "No space left on device", "/data/out/x")) == (
        "/data/out/x: no space left on device; free some space, then rerun the same command to resume")
    assert json.dumps(error_line(KeyError("x"))).count("\\n") == 0
