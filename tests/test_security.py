"""Security: keys never logged or written, YAML loaded safely, no remote code unless asked, outputs stay put."""

from __future__ import annotations

import ast
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ROOT, run_distill, write_jsonl, write_spec

from pipelines.run.preflight import check_teacher
from pipelines.spec import PrmConfig, SpecError, TeacherConfig
from pipelines.teachers.build import build_llm
from testing.loopback.faults import FaultPlan
from testing.loopback.teacher import LoopbackTeacher

SECRET = "sk-test-3f9c1e77aa0b4d2e"
CODE_DIRS = [ROOT / "pipelines", ROOT / "prm", ROOT / "bench"]


def _answer(messages: list[dict[str, str]], index: int) -> str:
    return "<thought>One step.\n\nTwo steps.</thought>\\boxed{2}"


def test_the_api_key_is_sent_but_never_logged_or_written(tmp_path: Path):
    source = write_jsonl(tmp_path / "p.jsonl", [{"question": f"1 + 1? ({i})" + (" FAIL" if i == 2 else ""),
                                                 "answer": "2"} for i in range(6)])
    out = tmp_path / "out"
    # Failing requests too: an error message is where a key most often leaks.
    with LoopbackTeacher(_answer, faults=FaultPlan(always={"FAIL": "http_500"})) as teacher:
        spec = write_spec(tmp_path / "p.yaml", source,
                          teacher={"base_url": teacher.base_url, "api_key_env": "TEACHER_KEY", "max_retries": 1})
        result = run_distill("--verbose", "run", spec, "--out", out, env={"TEACHER_KEY": SECRET})
    assert teacher.authorizations == {f"Bearer {SECRET}"}  # the key did reach the teacher
    frame = pd.read_parquet(out)
    assert set(frame[frame.problem.str.contains("FAIL")].error) == {"HTTP 500 (2 attempts)"}
    assert SECRET not in result.stdout + result.stderr
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 5  # shards, stats, spec, parts, distilabel's pipeline.yaml and log
    assert not [p for p in files if SECRET.encode() in p.read_bytes()]
    assert "TEACHER_KEY" in (out / "__meta__" / "spec.yaml").read_text()  # only the variable's name


class _KeyedModels(BaseHTTPRequestHandler):
    """GET /v1/models that wants ``Authorization: Bearer <SECRET>``."""

    seen: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        _KeyedModels.seen.append(self.headers.get("Authorization") or "")
        ok = self.headers.get("Authorization") == f"Bearer {SECRET}"
        body = b'{"object": "list", "data": [{"id": "served-model"}]}' if ok else b'{"error": "bad key ' + \
            (self.headers.get("Authorization") or "").encode() + b'"}'
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def keyed_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KeyedModels)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_preflight_sends_the_key_and_a_refusal_names_the_variable_not_the_key(keyed_server: str,
                                                                             caplog: pytest.LogCaptureFixture):
    teacher = TeacherConfig(base_url=keyed_server, model="served-model", api_key_env="TEACHER_KEY")
    check_teacher(teacher, SECRET)
    with pytest.raises(SpecError) as refused:
        check_teacher(teacher, "sk-wrong-key-0000")
    assert str(refused.value) == (f"teacher.api_key_env: {keyed_server} refused the API key (HTTP 401); "
                                  "export TEACHER_KEY=<the server's key> or fix teacher.api_key_env")
    other = TeacherConfig(base_url=keyed_server.replace("http://", "http://user:pw@") + "?token=t0k",
                          model="other-model")
    check_teacher(other, SECRET)  # served, though not that model: a warning without credentials
    assert "'other-model' is not among the models served at " + keyed_server + " (served-model)" in caplog.text
    assert "pw" not in caplog.text and "t0k" not in caplog.text and SECRET not in caplog.text
    assert _KeyedModels.seen[0] == f"Bearer {SECRET}"


def test_yaml_is_loaded_safely(tmp_path: Path):
    marker = tmp_path / "pwned"
    spec = tmp_path / "evil.yaml"
    spec.write_text(f'name: !!python/object/apply:os.system ["touch {marker}"]\nsource: {{path: x.jsonl}}\n')
    result = run_distill("run", spec, check=False)
    assert result.returncode == 2 and not marker.exists()
    assert result.stderr.strip().startswith(f"error: {spec}: invalid YAML (could not determine a constructor")


def _calls(path: Path) -> list[ast.Call]:
    return [node for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))) if isinstance(node, ast.Call)]


def test_no_unsafe_yaml_loader_or_hard_coded_remote_code_anywhere():
    unsafe = []
    for folder in CODE_DIRS:
        for path in folder.rglob("*.py"):
            for call in _calls(path):
                name = ast.unparse(call.func)
                loaders = [ast.unparse(k.value) for k in call.keywords if k.arg == "Loader"]
                if name in ("yaml.unsafe_load", "yaml.full_load", "yaml.load_all") or (
                        name == "yaml.load" and not any("Safe" in loader for loader in loaders)):
                    unsafe.append(f"{path}:{call.lineno}: {name}")
                for keyword in call.keywords:
                    if keyword.arg == "trust_remote_code" and isinstance(keyword.value, ast.Constant) \
                            and keyword.value.value is True:
                        unsafe.append(f"{path}:{call.lineno}: trust_remote_code=True")
    assert not unsafe, unsafe


def test_remote_code_is_off_unless_the_spec_asks():
    assert TeacherConfig().trust_remote_code is False
    assert PrmConfig(model="m").trust_remote_code is False
    for asked in (False, True):
        for backend in ("transformers", "vllm"):
            llm = build_llm(TeacherConfig(backend=backend, model="some/model", trust_remote_code=asked))
            assert llm.trust_remote_code is asked, backend


def test_user_data_never_names_a_file(tmp_path: Path):
    ids = ["../../escape", "/etc/passwd", "a/b", "..", "C:\\x", "name with spaces"]
    source = write_jsonl(tmp_path / "p.jsonl", [{"id": i, "question": f"1 + 1? {n}", "answer": "2"}
                                                for n, i in enumerate(ids)])
    work = tmp_path / "work"
    out = work / "out"
    with LoopbackTeacher(_answer) as teacher:
        spec = tmp_path / "p.yaml"
        spec.write_text(yaml.safe_dump({
            "name": "ids", "source": {"path": str(source), "problem_field": "question", "id_field": "id"},
            "teacher": {"model": "loopback-teacher", "base_url": teacher.base_url, "num_samples": 1}}))
        run_distill("run", spec, "--out", out)
    assert sorted(pd.read_parquet(out).problem_id.unique()) == sorted(ids)
    names = {p.name for p in out.rglob("*") if p.is_file() and ".cache/distilabel" not in str(p)}
    pattern = r"data-\d{5}-of-\d{5}\.parquet|part-\d{10}-[0-9a-f]{8}\.parquet|stats\.json|spec\.yaml|" \
              r"run_state\.json|run\.lock|filters\.json|fingerprint\.json|run\.log"
    assert all(re.fullmatch(pattern, name) for name in names), names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl", "p.yaml", "work"]
    assert [p.name for p in work.iterdir()] == ["out"]


def test_spec_yaml_keeps_no_secret_fields():
    """A key cannot even be put in a spec: the teacher section takes the name of an environment variable."""
    with pytest.raises(Exception, match="api_key"):
        TeacherConfig.model_validate({"api_key": SECRET})
    assert "api_key" not in yaml.safe_dump(TeacherConfig().model_dump()).replace("api_key_env", "")


def test_a_spec_output_folder_cannot_escape_through_a_symlink(tmp_path: Path):
    from pipelines.run.preflight import check_output

    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (work / "data").symlink_to(outside)
    assert check_output(Path("out/gsm8k"), work) == Path("out/gsm8k")
    with pytest.raises(SpecError, match="output.dir: 'data/gsm8k' leads outside the working directory"):
        check_output(Path("data/gsm8k"), work)
    assert not list(outside.iterdir())
