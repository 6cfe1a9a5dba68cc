"""Verify a final answer against gold: math-verify for math, normalised string match for exact."""

from __future__ import annotations

import re
import threading

_BOXED = re.compile(r"\\boxed\s*\{")


def gold_answer(raw: object) -> str | None:
    """The final answer inside a gold field: GSM8K's ``… #### 42`` gives ``42``."""
    if raw is None:
        return None
    text = str(raw).strip()
    if "####" in text:
        return text.rsplit("####", 1)[1].strip().replace(",", "")
    return last_boxed(text) or text


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{…}`` with balanced braces, or None."""
    matches = list(_BOXED.finditer(text))
    if not matches:
        return None
    start = matches[-1].end()
    depth = 1
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    return None


def _normalise(text: str) -> str:
    text = last_boxed(text) or text
    text = re.sub(r"\s+", " ", text).strip().strip(".").strip()
    return text.casefold()


def _math_equal(answer: str, gold: str) -> bool:
    # Imported here: math-verify (sympy, latex2sympy) takes a second to import, which `distill run` would spend
    # before its first teacher request; the curate worker pays it at its first batch instead.
    from math_verify import parse, verify

    # math-verify's timeouts use SIGALRM, which only works on the main thread.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    # math-verify needs a LaTeX anchor to read bare LaTeX such as "\\frac34": wrap the gold in $…$.
    gold_parsed = parse(gold if "$" in gold else f"${gold}$", parsing_timeout=timeout)
    answer_parsed = parse(answer, parsing_timeout=timeout)
    if not gold_parsed or not answer_parsed:
        return False
    return bool(verify(gold_parsed, answer_parsed, timeout_seconds=timeout))


def verify_answer(answer: str | None, gold: object, method: str) -> bool | None:
    """True/False when the method can judge, None when verification is off."""
    if method == "none":
        return None
    gold_text = gold_answer(gold)
    if not answer or not gold_text:
        return False
    if method == "exact":
        return _normalise(answer) == _normalise(gold_text)
    if method == "math":
        return _math_equal(answer, gold_text)
    raise ValueError(f"verification: unknown method {method!r} (use math, exact or none)")
