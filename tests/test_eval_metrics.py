"""The eval's pure parts against values worked out by hand: pass@k, maj@k, standard error, ECE, token statistics,
similarity, multiple-choice extraction, the shipped sets, leakage, the distribution rule and the --model syntax."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from distill.eval import metrics as m
from distill.eval.config import parse_model_flag, validate
from distill.eval.leakage import TrainFolder, distribution, leaked, problem_shape
from distill.eval.score import answer_key
from distill.eval.sets import load_set, set_problems, shipped_sets
from pipelines.spec import SimilarityConfig, SpecError
from pipelines.verifiers.similarity import chrf, rouge_l, wer
from pipelines.verifiers.verify import choice_options, extract_choice, verify_answer


@pytest.mark.parametrize(("n", "c", "k", "expected"), [
    (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
    (10, 3, 1, 0.3),  # pass@1 is c/n
    (10, 1, 5, 1 - 126 / 252),  # 1 - C(9,5)/C(10,5)
    (5, 3, 3, 1.0),  # fewer than k wrong samples: some right one is always drawn
    (4, 0, 2, 0.0), (4, 4, 1, 1.0), (1, 1, 1, 1.0),
])
def test_pass_at_k_by_hand(n: int, c: int, k: int, expected: float) -> None:
    assert m.pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_equals_the_binomial_form() -> None:
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert m.pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


def test_pass_at_k_rejects_impossible_counts() -> None:
    for args in ((4, 5, 1), (4, 1, 0), (4, 1, 5)):
        with pytest.raises(ValueError):
            m.pass_at_k(*args)


def test_pass_at_k_curve_and_standard_error() -> None:
    # (4 samples, 1 right) and (4, 3): k=1 (1/4 + 3/4)/2; k=2 ((1 - 3/6) + 1)/2; k=3 ((1 - 1/4) + 1)/2; k=4 1
    assert m.pass_at_k_curve([(4, 1), (4, 3)]) == pytest.approx({1: 0.5, 2: 0.75, 3: 0.875, 4: 1.0})
    mean, se = m.mean_with_se([1.0, 0.0, 1.0, 0.0])
    assert mean == 0.5 and se == pytest.approx(math.sqrt(1 / 3) / 2)  # stdev sqrt(1/3) over sqrt(4)
    assert m.mean_with_se([0.7]) == (0.7, None) and m.mean_with_se([]) == (None, None)


def test_majority_at_k_by_hand() -> None:
    keys, right = ["a", "a", "b"], [True, True, False]
    assert m.majority_at_k(keys, right, 3) == 1.0
    assert m.majority_at_k(keys, right, 1) == pytest.approx(2 / 3)
    assert m.majority_at_k(keys, right, 2) == pytest.approx((1 + 0.5 + 0.5) / 3)  # ties split evenly
    assert m.majority_at_k(["a", "b", "c"], [True, False, False], 3) == pytest.approx(1 / 3)
    assert m.majority_at_k([None, None], [False, False], 2) == 0.0  # no answers: no vote
    assert m.majority_at_k([None, "b", "b"], [False, True, True], 3) == 1.0  # unanswered samples do not vote
    # 20 choose 10 subsets are too many to enumerate: a seeded sample, the same every time
    keys20 = ["x"] * 12 + ["y"] * 8
    right20 = [True] * 12 + [False] * 8
    first = m.majority_at_k(keys20, right20, 10)
    assert first == m.majority_at_k(keys20, right20, 10) and 0.5 < first < 1.0


def test_consistency_confidence_and_ece_by_hand() -> None:
    assert m.consistency_confidence(["a", "a", "b", None]) == [0.5, 0.5, 0.25, 0.0]
    # bin [.9, 1): confidence .9, accuracy 1/2; bin [.1, .2): .1 and 0; ECE = 1/2 * .4 + 1/2 * .1
    assert m.expected_calibration_error([0.9, 0.9, 0.1, 0.1], [True, False, False, False]) == pytest.approx(0.25)
    assert m.expected_calibration_error([1.0, 1.0, 0.0, 0.0], [True, True, False, False]) == 0.0
    assert m.expected_calibration_error([], []) is None
    bins = m.reliability_bins([1.0, 0.3, 0.7, 0.05], [True, False, True, False], bins=10)
    assert [b.count for b in bins] == [1, 0, 0, 1, 0, 0, 0, 1, 0, 1]  # 1.0 in the last bin, 0.3 and 0.7 exact
    assert bins[9].accuracy == 1.0 and bins[3].confidence == pytest.approx(0.3) and bins[4].accuracy is None
    with pytest.raises(ValueError):
        m.reliability_bins([1.2], [True])


def test_token_stats_and_rate() -> None:
    stats = m.token_stats([10, 20, 30, None, 40])
    assert stats == {"mean": 25.0, "median": 25.0, "p90": 40, "max": 40, "known": 4}
    assert m.token_stats([None])["mean"] is None
    assert m.rate([True, False, False, True]) == 0.5 and m.rate([]) is None


def test_similarity_metrics() -> None:
    assert rouge_l("alpha beta x y", "alpha beta gamma delta") == pytest.approx(0.5)  # LCS 2 of 4 and 4
    assert rouge_l("", "alpha") == 0.0
    assert chrf("Hi Sarah, how are you?", "Hi Sarah, how are you?") == pytest.approx(1.0)
    assert chrf("zzz", "Hi Sarah") < 0.05
    assert wer("a b c", "a b d") == pytest.approx(1 / 3) and wer("", "") == 0.0 and wer("x", "") == 1.0
    reference = "Send the report to Mike by Friday."
    assert verify_answer("Send the report to Mike by Friday.", reference, "similarity") is True
    assert verify_answer("um send it", reference, "similarity") is False
    by_wer = SimilarityConfig(metric="wer", threshold=0.2)
    assert verify_answer("Send the report to Mike on Friday.", reference, "similarity", similarity=by_wer) is True
    assert verify_answer("Send it to Mike.", reference, "similarity", similarity=by_wer) is False


PROBLEM = "Which is a gas?\n\n(A) iron\n(B) oxygen\n(C) wood"


@pytest.mark.parametrize(("answer", "letter"), [
    ("(B)", "B"), ("B.", "B"), ("B", "B"), ("The answer is B", "B"), ("So the answer is (B).", "B"),
    ("\\boxed{B}", "B"), ("\\boxed{(B)}", "B"), ("oxygen", "B"), ("\\boxed{oxygen}", "B"), ("B) oxygen", "B"),
    ("I pick (C) wood", "C"), ("answer: A", "A"), ("Option A", "A"),
    ("A or B", None), ("the answer is a bit unclear", None), ("(D)", None), ("", None),
])
def test_choice_extraction(answer: str, letter: str | None) -> None:
    assert extract_choice(answer, choice_options(PROBLEM)) == letter
    assert verify_answer(answer, "B", "choice", problem=PROBLEM) is (letter == "B")


def test_shipped_sets_load_offline() -> None:
    assert set(shipped_sets()) >= {"gsm8k", "math-500", "aime-2024", "aime-2025", "arc-challenge", "bbh",
                                   "dictation-heldout", "lab-addition"}
    for name in shipped_sets():
        eval_set = load_set(name)
        problems = set_problems(eval_set, offline=True)
        assert problems and all(p["problem"] and p["answer"] for p in problems), name
        assert eval_set.temperature == 0.6 and eval_set.top_p == 0.95
        if eval_set.verification == "choice":  # lettered options, the gold among them
            for p in problems:
                assert p["answer"] in choice_options(p["problem"]), (name, p)
    arc = {p["problem_id"]: p for p in set_problems(load_set("arc-challenge"), offline=True)}
    assert arc["mini-3"]["answer"] == "B" and "(B) Mercury" in arc["mini-3"]["problem"]  # label "2" → B
    bbh = set_problems(load_set("bbh"), offline=True)
    assert bbh[3]["answer"] == "C" and "(C) green ball" in bbh[3]["problem"]  # target_idx 2 → C
    assert len(set_problems(load_set("gsm8k"), offline=True, limit=3)) == 3
    with pytest.raises(SpecError, match="unknown eval set 'nope'"):
        load_set("nope")


def test_lab_addition_set_is_the_lab_held_out_split() -> None:
    from lab.tasks import problems

    path = Path(load_set("lab-addition").source.path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == problems(100, seed=0, held_out=True)
    train = {p["question"] for p in problems(5000, seed=0)}
    assert not train & {r["question"] for r in rows}  # never among the train split's first 5,000


def test_answer_keys_group_equal_answers() -> None:
    assert answer_key("\\boxed{0.5}", "math", "") == answer_key("0.5", "math", "")
    assert answer_key("\\boxed{4}", "math", "") != answer_key("\\boxed{5}", "math", "")
    assert answer_key("The answer is (B)", "choice", PROBLEM) == answer_key("oxygen", "choice", PROBLEM) == "B"
    assert answer_key("", "math", "") is None and answer_key(None, "choice", PROBLEM) is None


def test_leakage_and_the_distribution_rule() -> None:
    long = "A farmer has seventeen sheep and all but nine run away; how many are left on the farm"
    folder = TrainFolder(Path("train"), ["What is 3 + 5?", long.replace("farmer", "shepherd")],
                         spec_name="lab-addition", shapes={problem_shape("3 + 5")})
    problems = [{"problem_id": "0", "problem": "what is 3+5 ?"}, {"problem_id": "1", "problem": long},
                {"problem_id": "2", "problem": "What is 4 + 4?"}]
    hits = leaked(problems, [folder], ngram=8)
    assert set(hits) == {"0", "1"}  # short text equal after normalisation; a shared 8-gram
    assert hits["1"]["ngram"] == "has seventeen sheep and all but nine run"  # the first shared one
    assert leaked(problems, [], 8) == {}
    lab = load_set("lab-addition")
    shaped = TrainFolder(Path("t"), ["12 + 34"], spec_name="other", shapes={problem_shape("12 + 34")})
    assert problem_shape("77 + 73") == problem_shape("1 + 2") == "# #"
    lab_problems = [{"problem_id": "0", "problem": "77 + 73"}]
    assert distribution(lab, lab_problems, [shaped])["label"] == "in-distribution"
    assert distribution(lab, lab_problems, [folder])["label"] == "in-distribution"  # by spec name
    gsm = load_set("gsm8k")
    from_hub = TrainFolder(Path("g"), ["x"], spec_name="mine", source_path="openai/gsm8k")
    assert distribution(gsm, [{"problem_id": "0", "problem": "y"}], [from_hub])["label"] == "in-distribution"
    assert distribution(gsm, [{"problem_id": "0", "problem": "y"}], [shaped])["label"] == "OOD"
    assert distribution(gsm, [], [])["label"] == "unlabelled"


def test_model_flag_syntax() -> None:
    assert parse_model_flag("teacher=http://127.0.0.1:8000/v1") == {"name": "teacher",
                                                                     "url": "http://127.0.0.1:8000/v1"}
    assert parse_model_flag("sft=out/lab/sft,backend=transformers") == {"name": "sft", "path": "out/lab/sft",
                                                                         "backend": "transformers"}
    assert parse_model_flag("out/lab/kd")["name"] == "kd"
    r1 = parse_model_flag("r1=deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B,reasoning_parser=deepseek_r1,"
                          "max_model_len=32768")
    assert r1["reasoning_parser"] == "deepseek_r1" and r1["path"].startswith("deepseek-ai/")
    cfg = validate({"sets": ["gsm8k"], "models": [r1, parse_model_flag("t=http://h:1/v1,served_model=x")]})
    assert cfg.models[0].max_model_len == 32768 and cfg.models[1].served_model == "x"
    with pytest.raises(SpecError, match="^--samples: must be at least 1, got 0$"):
        validate({"sets": ["gsm8k"], "models": [r1], "samples": 0}, {"samples"})
    with pytest.raises(SpecError, match="^--model r1: backend: "):
        validate({"sets": ["gsm8k"], "models": [{**r1, "backend": "nope"}]}, {"models"})
    with pytest.raises(SpecError, match="given twice"):
        validate({"sets": ["gsm8k"], "models": [r1, r1]}, {"models"})
    with pytest.raises(SpecError, match="is not key=value"):
        parse_model_flag("a=b,oops")


def test_teacher_traces_prefer_kept_thoughts(tmp_path: Path) -> None:
    import pandas as pd

    from distill.eval.evaluate import teacher_thoughts

    pd.DataFrame({"problem": ["What is 2+2?", "What is 2 + 2 ?", "What is 3+3?", "What is 3+3?", "What is 3+3?"],
                  "thought": ["kept one", "rejected one", "rejected a", None, "rejected b"],
                  "kept": [True, False, False, False, False]}).to_parquet(tmp_path / "data-00000-of-00001.parquet")
    thoughts = teacher_thoughts(tmp_path)  # the kept traces where there are some, else every thought
    assert thoughts == {"what is 2 2": ["kept one"], "what is 3 3": ["rejected a", "rejected b"]}
    with pytest.raises(SpecError, match="--teacher-traces: .* is not a dataset folder"):
        teacher_thoughts(tmp_path / "nothing")


def test_all_null_answers_score_as_wrong() -> None:
    """An untrained model answers nothing: parquet reads an all-null column back as NaN, which is not an answer."""
    from distill.eval.score import score_sample

    row = {"problem_id": "0", "sample_index": 0, "problem": "1 + 2", "gold": "3", "answer": float("nan"),
           "thought": float("nan"), "rejection_reason": "no_thought", "finish_reason": "stop", "completion_tokens": 7}
    scored = score_sample(row, load_set("lab-addition"), ["a reference thought"])
    assert scored["correct"] is False and scored["answer_key"] is None and scored["chain_rouge_l"] is None
    assert scored["format_ok"] is False and scored["tokens"] == 7
