"""Verify a final answer against gold: math-verify for math, normalised string match for exact, the option
letter for multiple choice, chrF/WER against a reference text for similarity, and the problem's tests run in a
sandbox for code (pipelines/verifiers/)."""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipelines.spec import CodeConfig, SimilarityConfig

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


def _math_equal(answer: str, gold: str) -> bool | None:
    # Imported here: math-verify (sympy, latex2sympy) takes a second to import, which `distill run` would spend
    # before its first teacher request; the curate worker pays it at its first batch instead.
    from math_verify import parse, verify

    # math-verify's timeouts use SIGALRM, which only works on the main thread.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    # math-verify needs a LaTeX anchor to read bare LaTeX such as "\\frac34": wrap the gold in $…$.
    gold_parsed = parse(gold if "$" in gold else f"${gold}$", parsing_timeout=timeout)
    answer_parsed = parse(answer, parsing_timeout=timeout)
    if not gold_parsed or not answer_parsed:
        return None  # nothing math-verify can read: undecided (a judge may decide it)
    return bool(verify(gold_parsed, answer_parsed, timeout_seconds=timeout))


# An option line of a multiple-choice problem: "(B) text", "B. text" or "B) text" at the start of a line.
_OPTION_LINE = re.compile(r"^\s*\(?([A-Z])[).:]\s+(.+?)\s*$", re.MULTILINE)
# the letter itself must be a capital: "the answer is a bit long" picks nothing
_ANSWER_IS = re.compile(r"(?i:answer)\s*(?:(?i:is)|:)\s*:?\s*(?:(?i:option)\s*)?\(?([A-Z])\)?(?![A-Za-z])")
_LONE_LETTER = re.compile(r"^\s*(?:option\s*)?\(?([A-Z])\)?\s*[.:)]?\s*$", re.IGNORECASE)
_LEADING_LETTER = re.compile(r"^\s*\(?([A-Z])[).:](?:\s|$)")
_PAREN_LETTER = re.compile(r"\(([A-Z])\)")


def choice_options(problem: str | None) -> dict[str, str]:
    """The options of a multiple-choice problem, letter → text, read from its option lines."""
    options: dict[str, str] = {}
    for match in _OPTION_LINE.finditer(problem or ""):
        options.setdefault(match.group(1), match.group(2))
    return options


def _plain(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.casefold()).strip()


def extract_choice(answer: str | None, options: dict[str, str] | None = None) -> str | None:
    """The option letter an answer picks: ``\\boxed{B}``, ``answer is (B)``, ``(B)``, ``B.``, ``B`` or the text
    of one option. With ``options`` only their letters count; None when the answer picks none (or several)."""
    if not answer:
        return None
    valid = set(options or []) or set("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    boxed = last_boxed(answer)
    candidates = [boxed] if boxed is not None else []
    candidates.append(answer)
    for text in candidates:
        for pattern in (_LONE_LETTER, _LEADING_LETTER):
            match = pattern.match(text)
            if match and match.group(1).upper() in valid:
                return match.group(1).upper()
        said = [m.group(1).upper() for m in _ANSWER_IS.finditer(text) if m.group(1).upper() in valid]
        if said:
            return said[-1]
        marked = {m.group(1) for m in _PAREN_LETTER.finditer(text) if m.group(1) in valid}
        if len(marked) == 1:
            return marked.pop()
        if options:
            plain = _plain(text)
            exact = [letter for letter, option in options.items() if _plain(option) == plain]
            if len(exact) == 1:
                return exact[0]
            within = [letter for letter, option in options.items()
                      if _plain(option) and re.search(rf"\b{re.escape(_plain(option))}\b", plain)]
            if len(within) == 1:
                return within[0]
    return None


def _similar(answer: str, reference: str, similarity: SimilarityConfig | None) -> bool:
    from pipelines.verifiers.similarity import chrf, wer

    metric = similarity.metric if similarity else "chrf"
    threshold = similarity.threshold if similarity else 0.6
    if metric == "wer":
        return wer(answer, reference) <= threshold
    return chrf(answer, reference) >= threshold


def similarity_score(answer: str | None, reference: object, similarity: SimilarityConfig | None) -> float | None:
    """The similarity of an answer to its reference: chrF/100 or WER, as ``similarity.metric`` says."""
    from pipelines.verifiers.similarity import chrf, wer

    if not answer or reference is None:
        return None
    if similarity is not None and similarity.metric == "wer":
        return wer(answer, str(reference).strip())
    return chrf(answer, str(reference).strip())


def decide_answer(answer: str | None, gold: object, method: str, problem: str | None = None,
                  similarity: SimilarityConfig | None = None, code: CodeConfig | None = None) -> bool | None:
    """True/False when the rules decide; None when they cannot: no answer math-verify can read, no option picked,
    or ``method`` none/judge (nothing rule-based to check)."""
    if method in ("none", "judge"):
        return None
    if method == "code":
        from pipelines.verifiers.code import verify_code

        return verify_code(answer, None if gold is None else str(gold), problem, code)
    gold_text = gold_answer(gold)
    if not answer or not gold_text:
        return False
    if method == "exact":
        return _normalise(answer) == _normalise(gold_text)
    if method == "math":
        return _math_equal(answer, gold_text)
    if method == "choice":
        picked = extract_choice(answer, choice_options(problem))
        return None if picked is None else picked == extract_choice(gold_text)
    if method == "similarity":
        return _similar(answer, str(gold).strip(), similarity)
    raise ValueError(f"verification: unknown method {method!r} (use math, exact, choice, similarity, code, judge "
                     "or none)")


def verify_answer(answer: str | None, gold: object, method: str, problem: str | None = None,
                  similarity: SimilarityConfig | None = None, code: CodeConfig | None = None) -> bool | None:
    """True/False when the method can judge, None when verification is off (an undecided answer is False).

    ``choice`` reads the options from the ``problem`` text (so the option text counts as an answer) and compares
    the letter with the gold letter; ``similarity`` compares the answer with the gold reference text; ``code``
    runs the answer's code against the gold test program in the sandbox.
    """
    if method in ("none", "judge"):
        return None
    return decide_answer(answer, gold, method, problem, similarity, code) is True
