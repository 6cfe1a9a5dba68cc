"""Answer verification against gold: math-verify equivalence, GSM8K gold, exact match, off."""

from __future__ import annotations

import threading

import pytest

from pipelines.verifiers.verify import gold_answer, last_boxed, verify_answer


@pytest.mark.parametrize(
    ("answer", "gold"),
    [
        ("\\boxed{\\frac{1}{2}}", "0.5"),
        ("\\boxed{0.5}", "\\frac{1}{2}"),
        ("The answer is 42.", "Natalia sold 48/2 = 24 clips in May. #### 42"),
        ("\\boxed{1,000}", "#### 1,000"),
        ("\\boxed{\\dfrac{3}{4}}", "The solution is ... so the answer is $\\boxed{\\frac34}$."),
        ("$x = 3$", "3"),
    ],
)
def test_math_equivalent(answer: str, gold: str) -> None:
    assert verify_answer(answer, gold, "math") is True


@pytest.mark.parametrize(("answer", "gold"), [("\\boxed{41}", "#### 42"), ("\\boxed{\\frac{1}{3}}", "0.5"),
                                              ("no number here", "#### 7"), ("", "5"), (None, "5")])
def test_math_wrong(answer: str | None, gold: str) -> None:
    assert verify_answer(answer, gold, "math") is False


def test_math_off_the_main_thread() -> None:
    """Distilabel may run steps in threads, where math-verify's SIGALRM timeout cannot be used."""
    results: list[bool | None] = []
    worker = threading.Thread(target=lambda: results.append(verify_answer("\\boxed{\\frac{1}{2}}", "0.5", "math")))
    worker.start()
    worker.join()
    assert results == [True]


def test_exact_and_none() -> None:
    assert verify_answer("Meet on Tuesday at 3.", "meet on  tuesday at 3", "exact") is True
    assert verify_answer("\\boxed{Paris}", "paris", "exact") is True
    assert verify_answer("Meet Monday.", "Meet on Tuesday at 3.", "exact") is False
    assert verify_answer("anything", "gold", "none") is None
    with pytest.raises(ValueError, match="verification"):
        verify_answer("1", "1", "fuzzy")


def test_gold_extraction() -> None:
    assert gold_answer("step one\nstep two\n#### 1,234") == "1234"
    assert gold_answer("so it is $\\boxed{\\frac{\\sqrt{2}}{2}}$.") == "\\frac{\\sqrt{2}}{2}"
    assert gold_answer(None) is None
    assert last_boxed("\\boxed{a} then \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{unbalanced") is None
