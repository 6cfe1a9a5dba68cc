"""Text similarity from kept libraries: ROUGE-L (rouge-score), chrF (sacrebleu) and WER (jiwer), all in [0, 1].

ROUGE-L compares chains of thought (the student's with the teacher's on the same problem); chrF and WER compare a
cleaned dictation with its reference. Long chains are cut to ``MAX_WORDS`` words first: rouge-score's LCS is a
pure-Python dynamic programme, quadratic in length.
"""

from __future__ import annotations

from functools import cache
from typing import Any

MAX_WORDS = 600


@cache
def _rouge() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def _head(text: str, words: int = MAX_WORDS) -> str:
    return " ".join(text.split()[:words])


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 (longest common subsequence of words, lower-cased, punctuation dropped)."""
    if not candidate.strip() or not reference.strip():
        return 0.0
    return float(_rouge().score(_head(reference), _head(candidate))["rougeL"].fmeasure)


def best_rouge_l(candidate: str, references: list[str]) -> float:
    """The highest ROUGE-L F1 of ``candidate`` against any of ``references`` (0 without references)."""
    return max((rouge_l(candidate, ref) for ref in references), default=0.0)


def chrf(hypothesis: str, reference: str) -> float:
    """chrF (character 6-grams, beta 2; sacrebleu's defaults) divided by 100."""
    from sacrebleu.metrics import CHRF

    return float(_chrf_metric(CHRF).sentence_score(hypothesis, [reference]).score) / 100.0


@cache
def _chrf_metric(cls: Any) -> Any:
    return cls()


def wer(hypothesis: str, reference: str) -> float:
    """Word error rate of ``hypothesis`` against ``reference`` (jiwer; may exceed 1 for long hypotheses)."""
    import jiwer

    if not reference.split():
        return 0.0 if not hypothesis.split() else 1.0
    return float(jiwer.wer(reference, hypothesis))
