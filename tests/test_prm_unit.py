"""PRM logic as pure functions: step splitting, aggregation, verdicts on samples, ProcessBench F1, batching."""

from __future__ import annotations

import json

import pytest

from pipelines.spec import DatasetSpec, PrmConfig, SpecError
from prm.aggregate import aggregate, first_error, judge
from prm.encode import length_batches, pair_reward, tag_positions
from prm.evaluate import MINI_SET, load_labelled, predictions, processbench_f1, sweep
from prm.filter import apply_verdict, score_rows, wants_score
from prm.split import split_steps

THOUGHT = "Step 1: 2 + 3 = 5.\n\nStep 2: 5 * 4 = 20.\nStep 3: so the answer is 20.\n\n  \nDone."


def test_split_auto_uses_blank_lines_and_step_markers_and_keeps_text_verbatim() -> None:
    steps = split_steps(THOUGHT)
    assert [s.strip() for s in steps] == ["Step 1: 2 + 3 = 5.", "Step 2: 5 * 4 = 20.",
                                          "Step 3: so the answer is 20.", "Done."]
    assert "".join(steps) == THOUGHT


@pytest.mark.parametrize("mode,expected", [
    ("blank_lines", ["Step 1: 2 + 3 = 5.", "Step 2: 5 * 4 = 20.\nStep 3: so the answer is 20.", "Done."]),
    ("step_markers", ["Step 1: 2 + 3 = 5.", "Step 2: 5 * 4 = 20.", "Step 3: so the answer is 20.\n\n  \nDone."]),
    ("lines", ["Step 1: 2 + 3 = 5.", "Step 2: 5 * 4 = 20.", "Step 3: so the answer is 20.", "Done."]),
])
def test_split_modes(mode: str, expected: list[str]) -> None:
    steps = split_steps(THOUGHT, mode)
    assert [s.strip() for s in steps] == expected
    assert "".join(steps) == THOUGHT


def test_split_regex_ends_a_step_after_each_match_and_edge_cases() -> None:
    assert split_steps("a; b;c ;d", "regex", r";\s*") == ["a; ", "b;", "c ;", "d"]
    assert split_steps("a;b;  ", "regex", ";") == ["a;", "b;  "]  # a whitespace-only piece joins the step before
    assert split_steps("  \n\n Step 1: x", "auto") == ["  \n\n Step 1: x"]
    assert split_steps(None) == [] and split_steps(" \n\n ") == []
    assert split_steps("one step, no breaks") == ["one step, no breaks"]
    huge = "\n\n".join(f"step {i}" for i in range(2000))
    assert len(split_steps(huge)) == 2000 and "".join(split_steps(huge)) == huge
    assert split_steps("**Step 1.** a\n**Step 2.** b", "step_markers") == ["**Step 1.** a\n", "**Step 2.** b"]
    with pytest.raises(ValueError, match="unknown split mode"):
        split_steps("x", "sentences")


def test_aggregations_first_error_and_threshold() -> None:
    scores = [0.9, 0.4, 0.8]
    assert aggregate(scores, "min") == 0.4
    assert aggregate(scores, "mean") == pytest.approx(0.7)
    assert aggregate(scores, "last") == 0.8
    assert aggregate(scores, "product") == pytest.approx(0.288)
    assert first_error(scores, 0.5) == 1 and first_error(scores, 0.3) is None
    verdict = judge(scores, "min", 0.5)
    assert (verdict.prm_score, verdict.prm_first_error, verdict.passed) == (0.4, 1, False)
    assert judge(scores, "mean", 0.5).passed  # mean 0.7 passes although step 1 is a predicted error
    assert judge([0.5], "min", 0.5).passed  # at the threshold passes
    with pytest.raises(ValueError):
        aggregate([], "min")


def test_apply_verdict_rejects_only_kept_samples_under_threshold_and_rescoring_resets_prm() -> None:
    kept = {"thought": "a", "kept": True, "rejection_reason": None}
    low, high = judge([0.2], "min", 0.5), judge([0.9], "min", 0.5)
    assert apply_verdict(kept, low) | {} == {**kept, "step_scores": [0.2], "prm_score": 0.2, "prm_first_error": 0,
                                              "kept": False, "rejection_reason": "prm"}
    assert apply_verdict(kept, high)["kept"] is True
    incorrect = {"thought": "a", "kept": False, "rejection_reason": "incorrect"}
    assert not wants_score(incorrect) and wants_score(incorrect, score_rejected=True)
    assert apply_verdict(incorrect, low)["rejection_reason"] == "incorrect"
    earlier = {"thought": "a", "kept": False, "rejection_reason": "prm"}
    assert wants_score(earlier)
    assert apply_verdict(earlier, high)["kept"] is True and apply_verdict(earlier, high)["rejection_reason"] is None
    assert apply_verdict(kept, None)["step_scores"] is None and apply_verdict(kept, None)["kept"] is True
    assert not wants_score({"thought": None, "kept": True})


class _FakeScorer:
    """Scores each thought by the number in it, to test the row plumbing."""

    def score(self, items):  # noqa: ANN001, ANN201
        return [judge([float(t)], "min", 0.5) for _, t in items]


def test_score_rows_scores_kept_samples_and_recomputes_pass_rate() -> None:
    rows = [{"problem": "p", "samples": [{"thought": "0.9", "kept": True, "rejection_reason": None},
                                         {"thought": "0.1", "kept": True, "rejection_reason": None},
                                         {"thought": "0.1", "kept": False, "rejection_reason": "incorrect"},
                                         {"thought": None, "kept": False, "rejection_reason": "no_thought"}]}]
    out = score_rows(_FakeScorer(), rows)[0]
    assert [s["kept"] for s in out["samples"]] == [True, False, False, False]
    assert [s["rejection_reason"] for s in out["samples"]] == [None, "prm", "incorrect", "no_thought"]
    assert [s["prm_score"] for s in out["samples"]] == [0.9, 0.1, None, None]
    assert out["pass_rate"] == 0.25


def test_processbench_f1_and_predictions() -> None:
    scores = [[0.9, 0.2, 0.8], [0.9, 0.9], [0.1, 0.9], [0.9, 0.9, 0.3]]
    labels = [1, -1, 1, -1]
    predicted = predictions(scores, 0.5)
    assert predicted == [1, -1, 0, 2]
    report = processbench_f1(predicted, labels)
    assert (report["acc_erroneous"], report["acc_correct"]) == (0.5, 0.5)
    assert report["f1"] == pytest.approx(0.5)
    assert processbench_f1([0, 0], [-1, -1])["f1"] == 0.0
    best_threshold, best = sweep(scores, labels, thresholds=[0.05, 0.5, 0.85])
    assert best["f1"] >= report["f1"]


def test_mini_processbench_set_is_valid_and_balanced() -> None:
    traces = load_labelled(MINI_SET)
    assert len(traces) >= 40
    labels = [t.label for t in traces]
    assert 15 <= labels.count(-1) <= 30
    assert {0, 1, 2} <= set(labels)
    assert len({t.id for t in traces}) == len(traces)


def test_load_labelled_names_the_bad_line(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"problem": "p", "steps": ["a"], "label": 0}) + "\n"
                    + json.dumps({"problem": "p", "steps": ["a", "b"], "label": 5}) + "\n")
    with pytest.raises(SpecError, match=r"bad.jsonl:2: label 5"):
        load_labelled(path)


def test_batches_group_by_length_within_budgets() -> None:
    lengths = [10, 300, 12, 290, 11, 5000]
    batches = length_batches(lengths, batch_size=2, max_batch_tokens=1000)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert batches[0] == [5]  # longer than the budget: alone
    assert [1, 3] in batches and all(len(b) <= 2 for b in batches)
    for batch in batches:
        assert len(batch) == 1 or max(lengths[i] for i in batch) * len(batch) <= 1000


def test_tag_positions_take_the_last_token_of_a_tag_and_skip_special_tokens() -> None:
    # text "ab ки\n": tokens "a"(0,1) "b"(1,2) " к"(2,4) "и"(4,5) "\n"(5,6), plus a BOS (0,0)
    offsets = [(0, 0), (0, 1), (1, 2), (2, 4), (4, 5), (5, 6)]
    assert tag_positions(offsets, [5]) == [4]
    assert tag_positions(offsets, [2, 6]) == [2, 5]


def test_pair_reward_from_probabilities_or_logits() -> None:
    assert pair_reward(0.2, 0.6, probs=True) == pytest.approx(0.75)
    assert pair_reward(0.0, 0.0, probs=False) == pytest.approx(0.5)
    assert pair_reward(-1.0, 1.0, probs=False) == pytest.approx(0.880797, abs=1e-6)


def test_prm_config_validation_names_the_field() -> None:
    base = {"name": "x", "source": {"path": "p.jsonl"}}
    spec = DatasetSpec.model_validate({**base, "prm": {"model": "m", "style": "qwen-prm"}})
    assert spec.prm is not None and spec.prm.tag == "<extra_0>" and PrmConfig(model="m").tag == " ки"
    for bad, message in [({"model": "m", "threshold": 2}, "threshold"), ({"style": "orm"}, "model"),
                         ({"model": "m", "split": "regex"}, "split_pattern"),
                         ({"model": "m", "split_pattern": "(("}, "invalid regex"),
                         ({"model": "m", "base_url": "localhost:8001"}, "not a URL")]:
        with pytest.raises(ValueError, match=message):
            DatasetSpec.model_validate({**base, "prm": bad})
