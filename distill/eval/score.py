"""Score a run's dataset folder: per-sample outcomes, then the metrics of a (model, set), all problems and clean.

A sample is **correct** when the model's final answer verifies against gold by the set's method: the text after
the thought block, or the whole completion when the model wrote no thought block (format adherence is its own
metric, so a base model that answers without ``<thought>`` is still scored on its answers). Truncated samples
(``finish_reason: length``) and failed requests count as wrong; failures are reported.

**Confidence** (calibration): the self-consistency confidence of a sample is the share of the problem's k
samples that give the same final answer (canonical form: math-verify's parse, the option letter, or the
normalised text); with ``logprobs`` also the sequence confidence ``exp(mean token log-probability)``.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from distill.eval import metrics as m
from distill.eval.sets import EvalSet
from pipelines.filters.decontaminate import normalise_words
from pipelines.verifiers.similarity import best_rouge_l, chrf, wer
from pipelines.verifiers.verify import _normalise, choice_options, extract_choice, verify_answer

FORMAT_REASONS = {"no_thought", "unterminated_thought", "empty_thought", "malformed_tags", "no_answer"}


def answer_key(answer: str | None, method: str, problem: str) -> str | None:
    """The canonical form of a final answer, so that equal answers vote together."""
    if not answer or not answer.strip():
        return None
    if method == "choice":
        return extract_choice(answer, choice_options(problem))
    if method == "math":
        parsed = _math_parse(answer)
        if parsed is not None:
            return parsed
    return _normalise(answer) or None


def _math_parse(answer: str) -> str | None:
    """math-verify's reading of an answer, decimals as fractions (0.5 and \\frac{1}{2} vote together)."""
    import sympy
    from math_verify import parse

    timeout = 5 if threading.current_thread() is threading.main_thread() else None  # SIGALRM: main thread only
    try:
        parsed = parse(answer, parsing_timeout=timeout)
    except Exception:  # noqa: BLE001 - math-verify raises on odd LaTeX; fall back to the text
        return None
    if not parsed:
        return None
    value = parsed[0]
    if isinstance(value, sympy.Float):
        value = sympy.Rational(str(value)).limit_denominator(10**9)
    return str(value)


def problem_key(text: str) -> str:
    return " ".join(normalise_words(text))


def score_sample(row: dict[str, Any], eval_set: EvalSet, teacher_thoughts: list[str] | None) -> dict[str, Any]:
    """The per-sample fields of the scores file (pure: a dataset row in, a dict out)."""
    error = row.get("rejection_reason") == "teacher_error"
    truncated = row.get("finish_reason") == "length"
    answer = None if error or truncated else row.get("answer")
    answer = answer if isinstance(answer, str) else None  # an all-null column reads back as NaN
    thought = row.get("thought") if isinstance(row.get("thought"), str) else None
    method = eval_set.verification
    correct = bool(answer) and verify_answer(answer, row.get("gold"), method, problem=row["problem"],
                                             similarity=eval_set.similarity) is True
    logprobs = row.get("token_logprobs")
    logprobs = [x for x in logprobs if x is not None and math.isfinite(x)] if logprobs is not None else []
    scored: dict[str, Any] = {
        "problem_id": row["problem_id"], "sample_index": int(row["sample_index"]), "correct": correct,
        "answer_key": None if error or truncated else answer_key(answer, method, row["problem"]),
        "error": error, "truncated": truncated,
        "format_ok": not error and not truncated and row.get("rejection_reason") not in FORMAT_REASONS,
        "tokens": None if row.get("completion_tokens") is None else int(row["completion_tokens"]),
        "logprob_confidence": math.exp(sum(logprobs) / len(logprobs)) if logprobs else None,
        "chain_rouge_l": (best_rouge_l(thought, teacher_thoughts)
                          if teacher_thoughts and thought and not error else None),
    }
    if method == "similarity":
        reference, text = str(row.get("gold") or ""), answer or ""
        scored.update(chrf=chrf(text, reference), wer=wer(text, reference))
    return scored


def add_consistency(samples: list[dict[str, Any]]) -> None:
    """Each sample's self-consistency confidence within its problem (in place)."""
    by_problem: dict[str, list[dict[str, Any]]] = {}
    for sample in samples:
        by_problem.setdefault(sample["problem_id"], []).append(sample)
    for group in by_problem.values():
        for sample, conf in zip(group, m.consistency_confidence([s["answer_key"] for s in group]), strict=True):
            sample["confidence"] = conf


def _maj_ks(n: int) -> list[int]:
    return sorted({*(2 ** i for i in range(n.bit_length()) if 2 ** i <= n), n})


def _calibration(confs: list[float], correct: list[bool], bins: int) -> dict[str, Any]:
    return {"ece": m.expected_calibration_error(confs, correct, bins),
            "bins": m.bins_as_dicts(m.reliability_bins(confs, correct, bins))}


def set_metrics(samples: list[dict[str, Any]], eval_set: EvalSet, bins: int = 10) -> dict[str, Any]:
    """The metrics of one model on one set (or on its clean problems), from scored samples."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for sample in sorted(samples, key=lambda s: (s["problem_id"], s["sample_index"])):
        groups.setdefault(sample["problem_id"], []).append(sample)
    if not groups:
        return {"problems": 0, "samples": 0}
    counts = [(len(g), sum(s["correct"] for s in g)) for g in groups.values()]
    pass1, se = m.mean_with_se([c / n for n, c in counts])
    result: dict[str, Any] = {
        "problems": len(groups), "samples": len(samples), "errors": sum(s["error"] for s in samples),
        "pass@1": pass1, "pass@1_se": se,
        "pass@k": {str(k): v for k, v in m.pass_at_k_curve(counts).items()},
        "format_adherence": m.rate([s["format_ok"] for s in samples if not s["error"]]),
        "truncation_rate": m.rate([s["truncated"] for s in samples]),
        "tokens": m.token_stats([s["tokens"] for s in samples]),
        "tokens_correct_mean": m.token_stats([s["tokens"] for s in samples if s["correct"]])["mean"],
        "tokens_wrong_mean": m.token_stats([s["tokens"] for s in samples if not s["correct"]])["mean"],
    }
    n = min(len(g) for g in groups.values())
    if eval_set.verification != "similarity":  # free text: answers never agree verbatim, votes mean nothing
        result["maj@k"] = {str(k): m.mean_with_se([m.majority_at_k([s["answer_key"] for s in g[:n]],
                                                                    [s["correct"] for s in g[:n]], k)
                                                    for g in groups.values()])[0] for k in _maj_ks(n)}
        result["calibration"] = _calibration([s["confidence"] for s in samples], [s["correct"] for s in samples],
                                             bins)
    with_lp = [s for s in samples if s["logprob_confidence"] is not None]
    if with_lp:
        result["calibration_logprob"] = _calibration([s["logprob_confidence"] for s in with_lp],
                                                     [s["correct"] for s in with_lp], bins)
    chains = [s["chain_rouge_l"] for s in samples if s["chain_rouge_l"] is not None]
    result["chain_rouge_l"] = m.mean_with_se(chains)[0]
    result["chain_samples"] = len(chains)
    if eval_set.verification == "similarity":
        result["chrf"] = m.mean_with_se([s["chrf"] for s in samples])[0]
        result["wer"] = m.mean_with_se([s["wer"] for s in samples])[0]
    return result
