"""The student's tokenizer, and the check that offline KD needs: teacher and student share one vocabulary.

Top-k targets are token ids of the teacher's vocabulary; the student's KD loss gathers its own logits at those
ids. With different tokenizers the ids mean different strings and the loss trains garbage, silently.
"""

from __future__ import annotations

from typing import Any

from distill.axolotl.kd_align import KDFormatError, parse_token_id
from pipelines.spec import SpecError

CHECK_ROWS = 32
MIN_AGREEMENT = 0.5


def load_tokenizer(name_or_path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise SpecError(f"--student: cannot load a tokenizer from {name_or_path!r} "
                        f"({str(exc).splitlines()[0][:120]}); give a local model folder or a Hub id") from None
    if not getattr(tokenizer, "chat_template", None):
        raise SpecError(f"--student: {name_or_path!r} has no chat template; use an instruct/chat model")
    return tokenizer


def decodes_back(tokenizer: Any, row: dict[str, Any]) -> bool:
    """Whether the student's tokenizer turns the teacher's sampled ids back into the row's completion."""
    try:
        ids = [parse_token_id(t) for t in row["tokens"]]
    except KDFormatError:
        return False
    if any(not 0 <= i < len(tokenizer) for i in ids):
        return False
    text = tokenizer.decode(ids, skip_special_tokens=True)
    completion = (row.get("completion") or "").strip()
    return bool(completion) and completion in text


def check_shared_tokenizer(student: Any, rows: list[dict[str, Any]], student_name: str | None,
                           teacher: Any | None = None) -> None:
    """Raise a one-line SpecError unless the teacher's token ids are the student's token ids."""
    if teacher is not None and teacher.get_vocab() != student.get_vocab():
        raise SpecError(f"--student: {student_name!r} does not share the teacher tokenizer's vocabulary; offline KD "
                        "needs one tokenizer: pick a student of the teacher's family, or train with SFT")
    sample = [r for r in rows if r.get("tokens")][:CHECK_ROWS]
    if not sample:
        return
    if not all(str(t).startswith("token_id:") for t in sample[0]["tokens"][:8]):
        raise SpecError("--format kd: the teacher's tokens are strings, not ids; serve the teacher with vLLM "
                        "(return_tokens_as_token_ids) and run the spec again")
    agreeing = sum(decodes_back(student, r) for r in sample)
    if agreeing < MIN_AGREEMENT * len(sample):
        teacher_model = sample[0].get("teacher_model")
        raise SpecError(f"--student: {student_name!r} decodes only {agreeing}/{len(sample)} of the teacher "
                        f"({teacher_model}) token sequences back to their completions: not the teacher's tokenizer; "
                        "offline KD needs a shared tokenizer (pick a student of the teacher's family, or use SFT)")


def check_scorer_tokenizer(scorer: Any, student: Any, rows: list[dict[str, Any]], student_name: str | None) -> None:
    """Raise a one-line SpecError unless the scoring teacher tokenises the rows' answers as the student does."""
    texts = [r["messages"][-1]["content"] for r in rows[:CHECK_ROWS] if r.get("messages")]
    agreeing = sum(scorer.tokenize(t) == list(student.encode(t, add_special_tokens=False)) for t in texts)
    if texts and agreeing < len(texts):
        raise SpecError(f"--student: {student_name!r} tokenises {len(texts) - agreeing}/{len(texts)} answers "
                        f"differently from the teacher ({scorer.description}); KD targets are token ids and need "
                        "one tokenizer: pick a student of the teacher's family, or train with SFT")
