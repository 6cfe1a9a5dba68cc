"""A changed spec never reuses old samples: what shapes a sample is fingerprinted, curation is redone in place."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import run_distill, write_jsonl, write_spec

from pipelines.run import fingerprint
from pipelines.spec import DatasetSpec, SpecError
from pipelines.store import write_part
from testing.loopback.teacher import LoopbackTeacher

PROBLEMS = [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in [(2, 3), (12, 30), (7, 8), (40, 2)]]


def responder(messages: list[dict[str, str]], index: int) -> str:
    a, b = map(int, re.findall(r"\d+", messages[-1]["content"]))
    answer = a + b + index  # the second sample of each problem is wrong
    return f"<thought>\nStep 1: we add {a} and {b}.\n\nStep 2: {a} + {b} = {a + b}.\n</thought>\n\\boxed{{{answer}}}"


def _spec(**changes: object) -> DatasetSpec:
    data = {"name": "s", "source": {"path": "p.jsonl"}, "teacher": {"model": "m"}}
    for key, value in changes.items():
        section, name = key.split("__")
        data.setdefault(section, {})[name] = value
    return DatasetSpec.model_validate(data)


@pytest.mark.parametrize("field, value, shown", [
    ("teacher__model", "other", "teacher.model 'm' → 'other'"),
    ("teacher__temperature", 0.9, "teacher.temperature 0.6 → 0.9"),
    ("teacher__top_p", 0.5, "teacher.top_p 0.95 → 0.5"),
    ("teacher__num_samples", 4, "teacher.num_samples 1 → 4"),
    ("teacher__max_new_tokens", 64, "teacher.max_new_tokens 8192 → 64"),
    ("teacher__top_logprobs", 5, "teacher.top_logprobs None → 5"),
    ("prompt__user_template", "Q: {problem}", "prompt.user_template '{problem}' → 'Q: {problem}'"),
    ("prompt__system", "Be brief.", "prompt.system 'You are a careful reasoner. First think…' → 'Be brief.'"),
])
def test_each_setting_that_shapes_a_sample_is_in_the_fingerprint(tmp_path: Path, field: str, value: object,
                                                                 shown: str):
    fingerprint.check(tmp_path, _spec())
    with pytest.raises(SpecError) as refused:
        fingerprint.check(tmp_path, _spec(**{field: value}))
    assert str(refused.value) == (f"{tmp_path}: its samples were generated with other settings ({shown}); rerun "
                                  "with --fresh to discard them and start over, or give another --out or --cache-dir")


def test_how_a_sample_is_fetched_is_not_in_the_fingerprint(tmp_path: Path):
    assert fingerprint.check(tmp_path, _spec()) is False
    same = _spec(teacher__base_url="http://10.0.0.7:8000/v1", teacher__backend="vllm", teacher__max_concurrency=3,
                 teacher__api_key_env="KEY", run__batch_size=7, teacher__timeout_s=5.0)
    assert fingerprint.check(tmp_path, same) is False


def test_a_cache_from_before_fingerprints_is_judged_by_its_teacher_model(tmp_path: Path):
    write_part(tmp_path, [{"problem_id": "0", "problem_index": 0, "sample_index": 0, "problem": "p", "gold": "1",
                           "kept": False, "rejection_reason": "no_thought", "teacher_model": "/x/tiny-model"}])
    with pytest.raises(SpecError, match=r"\(teacher.model '/x/tiny-model' → 'm'\); rerun with --fresh"):
        fingerprint.check(tmp_path, _spec())
    assert not (tmp_path / fingerprint.FILE).exists()
    assert fingerprint.check(tmp_path, _spec(teacher__model="/x/tiny-model")) is False
    assert (tmp_path / fingerprint.FILE).exists()


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "distilabel" not in p.parts and p.name != "run.lock"}


def test_a_changed_teacher_is_refused_then_fresh_starts_over(tmp_path: Path):
    source = write_jsonl(tmp_path / "p.jsonl", PROBLEMS)
    out = tmp_path / "out"
    with LoopbackTeacher(responder, model="teacher-a") as teacher:
        spec = write_spec(tmp_path / "p.yaml", source, teacher={"base_url": teacher.base_url, "model": "teacher-a"})
        run_distill("run", spec, "--out", out)
        before, asked = _snapshot(out), len(teacher.requests)
        for flags, shown in ((["--teacher-model", "teacher-b"], "teacher.model 'teacher-a' → 'teacher-b'"),
                             (["--num-samples", "3"], "teacher.num_samples 2 → 3"),
                             (["--max-new-tokens", "64"], "teacher.max_new_tokens 128 → 64")):
            refused = run_distill("run", spec, "--out", out, *flags, check=False)
            assert refused.returncode == 2
            assert refused.stderr.strip().splitlines() == [
                f"error: {out / '.cache'}: its samples were generated with other settings ({shown}); rerun with "
                "--fresh to discard them and start over, or give another --out or --cache-dir"]
        assert _snapshot(out) == before and len(teacher.requests) == asked  # nothing touched, nothing asked
        fresh = run_distill("run", spec, "--out", out, "--teacher-model", "teacher-b", "--num-samples", "3",
                            "--fresh")
        assert len(teacher.requests) == asked + len(PROBLEMS)
    frame = pd.read_parquet(out)
    assert len(frame) == len(PROBLEMS) * 3 and set(frame.teacher_model) == {"teacher-b"}
    assert "12 samples of 4 problems" in fresh.stdout
    meta = yaml.safe_load((out / "__meta__" / "spec.yaml").read_text())
    stats = json.loads((out / "__meta__" / "stats.json").read_text())
    # the record is the effective spec: what the run used, the flags included
    assert stats["teacher_model"] == "teacher-b" and stats["runs"] == 1 and meta["teacher"]["model"] == "teacher-b"
    assert meta["teacher"]["num_samples"] == 3


def test_changing_verification_or_the_prm_curates_again_without_the_teacher(tmp_path: Path, tiny_model_dir: Path):
    source = write_jsonl(tmp_path / "p.jsonl", PROBLEMS)
    out = tmp_path / "out"
    with LoopbackTeacher(responder) as teacher:
        spec = write_spec(tmp_path / "p.yaml", source, teacher={"base_url": teacher.base_url})
        run_distill("run", spec, "--out", out)
        first = pd.read_parquet(out)
        assert (first.rejection_reason == "incorrect").sum() == len(PROBLEMS)  # every second sample
        asked = len(teacher.requests)
        lenient = write_spec(tmp_path / "p.yaml", source, teacher={"base_url": teacher.base_url},
                             verification="none")
        run_distill("run", lenient, "--out", out)
        assert len(teacher.requests) == asked
        second = pd.read_parquet(out)
        assert second.kept.all() and second.correct.isna().all() and (second.pass_rate == 1.0).all()
        assert list(second.completion) == list(first.completion)  # the same teacher answers, curated anew
        with_prm = write_spec(tmp_path / "p.yaml", source, teacher={"base_url": teacher.base_url},
                              prm={"model": str(tiny_model_dir), "style": "math-shepherd", "threshold": 0.0})
        result = run_distill("run", with_prm, "--out", out)
        assert len(teacher.requests) == asked
    third = pd.read_parquet(out)
    assert third.prm_score.notna().sum() == len(PROBLEMS)  # the correct samples, scored
    assert (third.rejection_reason == "incorrect").sum() == len(PROBLEMS)
    stats = json.loads((out / "__meta__" / "stats.json").read_text())
    assert stats["verification"] == "math" and stats["prm"]["model"] == str(tiny_model_dir)
    assert f"kept {len(PROBLEMS)} (50.0%)" in result.stdout
    recorded = json.loads((out / ".cache" / fingerprint.FILE).read_text())
    assert recorded["curation"]["prm"]["model"] == str(tiny_model_dir)
