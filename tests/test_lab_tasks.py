"""The lab's task families, teachers, students and config: pure checks, and small real trainings on CPU."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import run_distill

from lab.tasks import PUNCTUATION, TRAIN_WINDOW, addition_steps, examples, problems


def steps_and_answer(solution: str) -> tuple[list[str], str]:
    thought, answer = solution.split("</thought>\n\n")
    return thought.removeprefix("<thought>\n").strip().splitlines(), answer


def sum_from_steps(steps: list[str]) -> int:
    """Re-read the digits a worked addition's steps give (each column's total mod 10, then a leading carry)."""
    digits = [int(re.match(r".* = (\d+)", s).group(1)) % 10 for s in steps if " = " in s]
    lead = [int(s.split()[1]) for s in steps if s.startswith("carry ")]
    return int("".join(map(str, reversed(digits + lead))))


def test_addition_steps_by_hand() -> None:
    assert addition_steps(57, 68) == (["7 + 8 = 15, carry 1.", "5 + 6 + 1 = 12, carry 1.", "carry 1 in front."], 125)
    assert addition_steps(12, 30) == (["2 + 0 = 2.", "1 + 3 = 4."], 42)
    assert addition_steps(57, 68, wrong_column=0, delta=-1) == (["7 + 8 = 14, carry 1.", "5 + 6 + 1 = 12, carry 1.",
                                                                 "carry 1 in front."], 124)


@pytest.mark.parametrize("level", [1, 2, 4])
def test_addition_examples_are_right_or_wrong_on_purpose(level: int) -> None:
    rows = examples("addition", 300, seed=1, level=level, corrupt=0.3)
    corrupted = [ex for ex in rows if ex.corrupted]
    assert 50 < len(corrupted) < 130
    for ex in rows:
        a, b = map(int, ex.problem.split(" + "))
        assert len(str(a)) == len(str(b)) == level and ex.answer == str(a + b)
        steps, answer = steps_and_answer(ex.solution)
        given = int(re.fullmatch(r"\\boxed\{(\d+)\}", answer).group(1))
        assert given == sum_from_steps(steps)  # the answer always follows from the steps
        assert (given != a + b) == ex.corrupted  # and is wrong exactly when a step is


def test_dictation_examples() -> None:
    rows = examples("dictation", 400, seed=2, level=3, corrupt=0.25)
    assert len({ex.problem for ex in rows}) > 350
    kinds = {"filler": 0, "repeated": 0, "no sorry": 0, "restart": 0}
    for ex in rows:
        steps, answer = steps_and_answer(ex.solution)
        assert (answer != ex.answer) == ex.corrupted, ex
        assert ex.answer[0].isupper() and ex.answer[-1] in ".?" and steps[-1] == "capitalise the sentence."
        assert not any(mark in ex.problem for mark in PUNCTUATION)  # punctuation is spoken
        for word in PUNCTUATION.values():
            assert ex.problem.count(word) == sum(s == f'"{word}" is "{m}".' for s in steps
                                                 for m, w in PUNCTUATION.items() if w == word)
        for kind in kinds:
            kinds[kind] += any(kind in s for s in steps)
        if not ex.corrupted:  # every spoken word is either kept or named by a step
            named = " ".join(steps)
            for word in ex.problem.split():
                assert word in ex.answer.lower().replace(".", " ").replace(",", " ").replace("?", " ").split() \
                    or word in named or word in PUNCTUATION.values() or word in {"mark", "question"}, (word, ex)
    assert all(count > 50 for count in kinds.values()), kinds


def test_held_out_never_in_train() -> None:
    for task, level in (("addition", 2), ("dictation", 2)):
        held = problems(200, seed=0, held_out=True, task=task, level=level)
        train = {r["question"] for r in problems(TRAIN_WINDOW, seed=0, task=task, level=level)}
        assert len(held) == 200 and not train & {r["question"] for r in held}
        assert held == problems(200, seed=0, held_out=True, task=task, level=level)  # seeded
    with pytest.raises(ValueError, match="--n"):
        problems(100, seed=0, held_out=True, level=1)  # 81 one-digit sums in all


def test_lab_config_errors_name_the_field(tmp_path: Path) -> None:
    from lab.config import load_lab_config
    from pipelines.spec import SpecError

    cfg = load_lab_config("demo", {"students.max_steps": 7})
    assert cfg.students.max_steps == 7 and [v.name for v in cfg.students.variants] == ["sft", "kd"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("students: {variants: [{name: a, method: dpo}]}\n")
    with pytest.raises(SpecError, match=r"^bad.yaml: students.variants.0.method: "):
        load_lab_config(str(bad))
    with pytest.raises(SpecError, match="--config: 'nope' not found"):
        load_lab_config("nope")
    result = run_distill("lab", "run", "demo", "--set", "teacher.steps=0", check=False)
    assert result.returncode == 2 and result.stderr.strip() == \
        "error: demo.yaml: teacher.steps: Input should be greater than or equal to 1"


def test_lab_teacher_and_student_commands(tmp_path: Path) -> None:
    """A (very short) real training: a folder transformers loads, with the shape vLLM's CPU build serves; reused when
    the recipe matches; a student shares its tokenizer, and one seed gives one init."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "teacher"
    first = run_distill("lab", "teacher", "--task", "dictation", "--levels", "2,3", "--steps", "8", "--corrupt", "0.2",
                        "--out", out)
    assert first.stdout.strip().splitlines()[-1] == str(out)
    config = AutoConfig.from_pretrained(out)
    assert config.hidden_size // config.num_attention_heads >= 32
    recipe = json.loads((out / "lab.json").read_text())["recipe"]
    assert recipe["task"] == "dictation" and recipe["digits"] == [2, 3] and recipe["corrupt"] == 0.2
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    run_distill("lab", "teacher", "--task", "dictation", "--levels", "2,3", "--steps", "8", "--corrupt", "0.2",
                "--out", out)
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp  # reused
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.convert_tokens_to_ids("</thought>") != tokenizer.unk_token_id
    students = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run_distill("lab", "student", "--teacher", out, "--seed", seed, "--out", tmp_path / name)
        students[name] = AutoModelForCausalLM.from_pretrained(tmp_path / name)
        assert AutoTokenizer.from_pretrained(tmp_path / name).get_vocab() == tokenizer.get_vocab()
    weights = {k: dict(m.named_parameters())["model.embed_tokens.weight"] for k, m in students.items()}
    assert torch.equal(weights["a"], weights["b"]) and not torch.equal(weights["a"], weights["c"])
    assert students["a"].num_parameters() < AutoModelForCausalLM.from_pretrained(out).num_parameters()
    bad = run_distill("lab", "teacher", "--task", "chess", "--out", tmp_path / "x", check=False)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: --task: 'chess' is not one of")
