"""`distill eval` end to end against crafted-answers teachers (loopback servers with fixed answers), whose report
is known exactly: every number below is worked out by hand from the answers in GOOD and BAD."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from conftest import run_distill, write_jsonl

from testing.loopback.teacher import LoopbackTeacher

PROBLEMS = [{"question": "What is 2 + 2?", "answer": "4"}, {"question": "What is 3 + 5?", "answer": "8"},
            {"question": "What is 6 + 1?", "answer": "7"}]
MC = [{"question": "Which gas do we breathe in?", "choices": ["helium", "oxygen", "neon"], "answer": 1},
      {"question": "Which is a mammal?", "choices": ["whale", "shark", "trout"], "answer": 0}]
DICTATION = [{"dictation": "um hi Sarah comma how are you question mark", "clean": "Hi Sarah, how are you?"},
             {"dictation": "send it to Mike no sorry Mark period", "clean": "Send it to Mark."}]
T = "<thought>alpha beta gamma delta</thought>\n\n"
# per problem text, the four samples (content, finish_reason) of each crafted teacher
GOOD: dict[str, list[tuple[str, str]]] = {
    "What is 2 + 2?": [(T + "\\boxed{4}", "stop")] * 4,
    "What is 3 + 5?": [(T + "\\boxed{8}", "stop")] * 2 + [(T + "\\boxed{9}", "stop"), (T + "\\boxed{10}", "stop")],
    "What is 6 + 1?": [("The answer is \\boxed{7}", "stop"), ("<thought>alpha beta", "length"),
                       (T + "\\boxed{5}", "stop"), (T + "\\boxed{5}", "stop")],
    "Which gas do we breathe in?": [(T + "(B)", "stop"), (T + "The answer is B.", "stop"),
                                    (T + "\\boxed{oxygen}", "stop"), (T + "\\boxed{A}", "stop")],
    "Which is a mammal?": [(T + "A. whale", "stop")] * 4,
    "um hi Sarah": [(T + "Hi Sarah, how are you?", "stop")] * 4,
    "send it to Mike": [(T + "zzzz qqqq", "stop")] * 4,
}
BAD_THOUGHT = "<thought>alpha beta x y</thought>\n\n"


def _problem(messages: list[dict[str, str]]) -> str:
    user = messages[-1]["content"]
    return next(p for p in GOOD if user.startswith(p))


def good(messages: list[dict[str, str]], index: int) -> dict[str, Any]:
    content, finish = GOOD[_problem(messages)][index]
    return {"content": content, "finish_reason": finish}


def bad(messages: list[dict[str, str]], index: int) -> str:
    """Always wrong: 0 for the sums, C (never the gold) for the multiple choice."""
    return BAD_THOUGHT + ("\\boxed{C}" if _problem(messages).startswith("Which") else "\\boxed{0}")


def _set(path: Path, name: str, problems: Path, **fields: Any) -> Path:
    data = {"name": name, "family": "crafted", "source": {"path": str(problems), "problem_field": "question",
                                                         "answer_field": "answer", **fields.pop("source", {})},
            "samples": 4, "max_new_tokens": 64, **fields}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def crafted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("eval-crafted")
    sums = _set(root / "sums.yaml", "sums", write_jsonl(root / "sums.jsonl", PROBLEMS),
                in_distribution={"specs": ["sums-train"]})
    mc = _set(root / "mc.yaml", "mc", write_jsonl(root / "mc.jsonl", MC), verification="choice",
              source={"choices_field": "choices", "answer_is_index": True})
    dictation = _set(root / "dictation.yaml", "dictation", write_jsonl(root / "dictation.jsonl", DICTATION),
                     verification="similarity", similarity={"metric": "chrf", "threshold": 0.6},
                     source={"problem_field": "dictation", "answer_field": "clean"})
    train = root / "train"
    (train / "__meta__").mkdir(parents=True)
    pd.DataFrame({"problem": ["What is 3 + 5?", "What is 9 + 9?"]}).to_parquet(train / "data-00000-of-00001.parquet")
    (train / "__meta__" / "spec.yaml").write_text("name: sums-train\nsource: {path: elsewhere.jsonl}\n")
    with LoopbackTeacher(good, model="good-model") as g, LoopbackTeacher(bad, model="bad-model") as b:
        args = ["eval", "--set", sums, "--set", mc, "--set", dictation,
                "--model", f"good={g.base_url}", "--model", f"bad={b.base_url}",
                "--train", train, "--teacher-traces", "good", "--out", root / "out"]
        result = run_distill(*args)
        requests = len(g.requests) + len(b.requests)
        rerun = run_distill(*args)  # everything is done: resumes to the same report, asks nothing
        again = len(g.requests) + len(b.requests)
        changed = run_distill(*args, "--samples", "2", check=False)
    return {"out": root / "out", "stdout": result.stdout, "requests": requests, "again": again,
            "rerun": rerun.stdout, "changed": changed,
            "results": json.loads((root / "out" / "results.json").read_text())}


def test_crafted_pass_at_k_maj_and_se(crafted: dict[str, Any]) -> None:
    run = crafted["results"]["runs"]["good"]["sums"]["all"]
    assert run["problems"] == 3 and run["samples"] == 12 and run["errors"] == 0
    rates = [1.0, 0.5, 0.25]  # 4/4, 2/4, 1/4 (the unformatted but right answer counts; the truncated one does not)
    assert run["pass@1"] == pytest.approx(statistics.fmean(rates))
    assert run["pass@1_se"] == pytest.approx(statistics.stdev(rates) / math.sqrt(3))
    assert run["pass@1_se"] == pytest.approx(0.220479, abs=1e-6)
    # pass@2: (1 + (1 - 1/6) + (1 - 3/6)) / 3; pass@3: (1 + 1 + 3/4) / 3; pass@4: every problem has a right one
    assert run["pass@k"] == pytest.approx({"1": 7 / 12, "2": 7 / 9, "3": 11 / 12, "4": 1.0})
    # maj@4: 4 wins, 8 beats 9 and 10, 5 beats 7; maj@2 by hand over the 6 pairs: (1 + 3/6 + 2/6) / 3
    assert run["maj@k"] == pytest.approx({"1": 7 / 12, "2": 11 / 18, "4": 2 / 3})
    assert run["format_adherence"] == pytest.approx(10 / 12) and run["truncation_rate"] == pytest.approx(1 / 12)


def test_crafted_calibration_tokens_and_chain_similarity(crafted: dict[str, Any]) -> None:
    run = crafted["results"]["runs"]["good"]["sums"]["all"]
    # confidences: p0 1,1,1,1 (right); p1 .5,.5 (right) .25,.25 (wrong); p2 .25 (right) 0 (truncated) .5,.5 (wrong)
    # bins: [.9,1] acc 1 conf 1; [.5,.6) acc .5 conf .5; [.2,.3) acc 1/3 conf .25 (3 samples); [0,.1) acc 0 conf 0
    assert run["calibration"]["ece"] == pytest.approx(3 / 12 * (1 / 3 - 0.25))
    counts = [b["count"] for b in run["calibration"]["bins"]]
    assert counts == [1, 0, 3, 0, 0, 4, 0, 0, 0, 4]
    # the loopback teacher's tokens are characters, each with log-probability log 0.7: confidence 0.7 everywhere
    assert run["calibration_logprob"]["ece"] == pytest.approx(abs(7 / 12 - 0.7))
    lengths = sorted(len(text) for answers in list(GOOD.values())[:3] for text, _ in answers)
    assert run["tokens"]["mean"] == pytest.approx(statistics.fmean(lengths))
    assert run["tokens"]["median"] == statistics.median(lengths) and run["tokens"]["max"] == lengths[-1]
    bad = crafted["results"]["runs"]["bad"]["sums"]["all"]
    assert bad["pass@1"] == 0.0 and bad["pass@k"]["4"] == 0.0 and bad["maj@k"]["4"] == 0.0
    # "alpha beta x y" against the teacher's "alpha beta gamma delta" (F1 1/2; p0, p1 kept traces) and, where the
    # teacher kept none (p2), its best thought "alpha beta" (P 2/4, R 2/2: F1 2/3)
    assert bad["chain_rouge_l"] == pytest.approx((8 * 0.5 + 4 * 2 / 3) / 12) and bad["chain_samples"] == 12
    assert run["chain_rouge_l"] is None  # the reference itself


def test_crafted_multiple_choice(crafted: dict[str, Any]) -> None:
    run = crafted["results"]["runs"]["good"]["mc"]["all"]
    # (B), "answer is B", the option text "oxygen" are right, (A) is wrong; "A. whale" four times right
    assert run["pass@k"]["1"] == pytest.approx((3 / 4 + 1) / 2) and run["maj@k"]["4"] == 1.0
    assert crafted["results"]["runs"]["bad"]["mc"]["all"]["pass@1"] == 0.0


def test_crafted_dictation_similarity(crafted: dict[str, Any]) -> None:
    from pipelines.verifiers.similarity import chrf, wer

    run = crafted["results"]["runs"]["good"]["dictation"]["all"]
    assert run["pass@1"] == 0.5 and run["pass@1_se"] == pytest.approx(0.5)  # one cleanup right, one garbage
    assert run["chrf"] == pytest.approx((1.0 + chrf("zzzz qqqq", "Send it to Mark.")) / 2)
    assert run["wer"] == pytest.approx((0.0 + 1.0) / 2) and wer("zzzz qqqq", "Send it to Mark.") == 1.0
    assert "maj@k" not in run and "calibration" not in run  # free text: no votes
    scores = pd.read_parquet(crafted["out"] / "scores" / "good" / "dictation.parquet")  # scores per row
    assert sorted(scores.wer) == [0.0] * 4 + [1.0] * 4 and (scores.chrf[scores.wer == 0] == 1.0).all()
    assert "| dictation | unlabelled" not in (crafted["out"] / "report.md").read_text()  # labelled: --train given


def test_crafted_leakage_and_distribution(crafted: dict[str, Any]) -> None:
    sets = crafted["results"]["sets"]
    assert sets["sums"]["leakage"]["count"] == 1 and list(sets["sums"]["leakage"]["problems"]) == ["1"]
    assert sets["mc"]["leakage"]["count"] == 0 and crafted["results"]["runs"]["good"]["mc"]["clean"] is None
    assert sets["sums"]["distribution"]["label"] == "in-distribution" and "sums-train" in \
        sets["sums"]["distribution"]["reason"]
    assert sets["mc"]["distribution"]["label"] == "OOD"
    clean = crafted["results"]["runs"]["good"]["sums"]["clean"]  # without "What is 3 + 5?"
    assert clean["problems"] == 2 and clean["pass@1"] == pytest.approx(0.625)
    assert clean["pass@1_se"] == pytest.approx(statistics.stdev([1.0, 0.25]) / math.sqrt(2))
    report = (crafted["out"] / "report.md").read_text()
    assert "| sums | in-distribution | 62.5 ± 37.5 | 0.0 ± 0.0 |" in report  # the headline: clean problems
    assert "| mc | OOD | 87.5 ± 12.5 | 0.0 ± 0.0 |" in report
    assert "| good | all | 3 | 58.3 ± 22.0 | 100.0 (k=4) | 66.7 (k=4) | 83.3 | 8.3 |" in report
    assert "| good | clean | 2 | 62.5 ± 37.5 |" in report
    assert "Leakage (8-gram overlap with --train): **1** problem(s)" in report
    for kind in ("passk", "reliability", "tokens"):
        for name in ("sums", "mc"):
            png = crafted["out"] / "plots" / f"{kind}-{name}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_crafted_outputs_are_dataset_folders_and_resume(crafted: dict[str, Any]) -> None:
    out = crafted["out"]
    rows = pd.read_parquet(out / "runs" / "good" / "sums")  # a normal dataset folder
    assert len(rows) == 12 and rows.groupby("problem_id").size().eq(4).all()
    assert (out / "runs" / "good" / "sums" / "__meta__" / "stats.json").is_file()
    scores = pd.read_parquet(out / "scores" / "good" / "sums.parquet")
    assert scores.correct.sum() == 7 and scores.leaked.sum() == 4
    assert crafted["again"] == crafted["requests"] == 14  # one request (n=4) per problem, model and set
    assert "good: pass@1 sums 62.5 ± 37.5, mc 87.5 ± 12.5" in crafted["rerun"]
    changed = crafted["changed"]
    assert changed.returncode == 2 and changed.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "sampled earlier with other settings (samples differ)" in changed.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "nope", "--model", "m=http://127.0.0.1:9/v1"], "--set: unknown eval set 'nope'; give a set YAML or "
                                                              "one of: aime-2024, aime-2025, arc-challenge"),
    (["--set", "lab-addition", "--model", "m=http://127.0.0.1:9/v1"],
     "--model m: cannot reach http://127.0.0.1:9/v1 (connection refused); start the server"),
    (["--set", "lab-addition", "--model", "m=http://127.0.0.1:9/v1", "--samples", "0"],
     "--samples: must be at least 1, got 0"),
    (["--set", "lab-addition"], "--model: give at least one model"),
    (["--set", "lab-addition", "--model", "sft=no/such/dir/here"], "--model sft: 'no/such/dir/here' does not exist"),
    (["--set", "lab-addition", "--model", "sft=tests/no-model"], "--model sft: 'tests/no-model' does not exist"),
    (["--set", "lab-addition", "--model", "m=http://127.0.0.1:9/v1", "--train", "tests"],
     "--train: tests is not a dataset folder"),
])
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_distill("eval", *args, "--out", tmp_path / "out", check=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.stderr
    assert not (tmp_path / "out").exists()  # nothing written


def test_config_file_and_flag_override(tmp_path: Path) -> None:
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"sets": ["lab-addition"], "models": [{"name": "m", "url": "http://127.0.0.1:9/v1"}],
                                      "samples": 2, "bins": 1}))
    result = run_distill("eval", "--config", config, "--out", tmp_path / "out", check=False)
    assert result.returncode == 2 and result.stderr.strip() == \
        f"error: {config}: bins: Input should be greater than or equal to 2"
    result = run_distill("eval", "--config", config, "--samples", "0", "--out", tmp_path / "out", check=False)
    assert result.stderr.strip() == "error: --samples: must be at least 1, got 0"


def test_sigterm_mid_eval_then_rerun_resumes(tmp_path: Path) -> None:
    """SIGTERM while the first model is half done: the eval stops its run cleanly (exit 143); the same command
    finishes it, every problem once, without asking again for the problems already written."""
    import signal
    import subprocess
    import time

    from conftest import DISTILL, ROOT, wait_for

    problems = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(16)]
    eval_set = _set(tmp_path / "slow.yaml", "slow", write_jsonl(tmp_path / "slow.jsonl", problems), samples=2)

    def slow(messages: list[dict[str, str]], index: int) -> str:
        time.sleep(0.25)
        return T + "\\boxed{" + messages[-1]["content"].split()[2] + "}"  # i + i answered as i: right for 0 only

    out = tmp_path / "out"
    with LoopbackTeacher(slow, model="slow") as teacher:
        args = ["eval", "--set", str(eval_set), "--model", f"slow={teacher.base_url},batch_size=2,max_concurrency=1",
                "--out", str(out)]
        process = subprocess.Popen([*DISTILL, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        parts = out / "runs" / "slow" / "slow" / ".cache" / "parts"
        wait_for(lambda: len(list(parts.glob("part-*.parquet"))) >= 2, 120, "the first part files")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 143 and "interrupted; rerun the same command to resume" in stderr
        asked = len(teacher.requests)
        assert asked < 16 and not (out / "results.json").exists()
        run_distill(*args)  # the run lock is free: nothing of the interrupted run is left
        rows = pd.read_parquet(out / "runs" / "slow" / "slow")
        assert len(rows) == 32 and rows.groupby("problem_id").size().eq(2).all()
        assert len(teacher.requests) < asked + 16  # the written problems were not asked again
    results = json.loads((out / "results.json").read_text())
    assert results["runs"]["slow"]["slow"]["all"]["pass@1"] == pytest.approx(1 / 16)


def test_a_checkpoint_retrained_in_place_is_not_resumed(tmp_path: Path) -> None:
    """The run key holds the weights' stamp: another training into the same folder makes the old samples stale."""
    import os

    from distill.eval.run import weights_stamp

    model = tmp_path / "student"
    model.mkdir()
    (model / "config.json").write_text("{}")
    weights = model / "model.safetensors"
    weights.write_bytes(b"a" * 10)
    first = weights_stamp(str(model))
    assert first is not None and first.startswith("model.safetensors:10:")
    weights.write_bytes(b"b" * 10)
    os.utime(weights, ns=(1, 1))  # same size, other time: another training
    assert weights_stamp(str(model)) != first
    assert weights_stamp(str(tmp_path / "absent")) is None and weights_stamp(None) is None
