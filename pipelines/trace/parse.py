"""Parse a teacher completion into (thought, answer), or a rejection reason.

Accepted shapes: ``<thought>…</thought> answer``, R1's ``<think>…</think> answer`` (also without the
opening tag, which R1 chat templates put in the prompt), and a separate reasoning field
(vLLM's ``reasoning_content`` / ``reasoning``) with the answer in the content.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TAGS = ("thought", "think")
_TAG = re.compile(r"<(/?)(thought|think)\s*>", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedTrace:
    thought: str | None
    answer: str | None
    rejection_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.rejection_reason is None


def _to_text(value: str | bytes | None) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def _finish(thought: str, answer: str) -> ParsedTrace:
    thought, answer = thought.strip(), answer.strip()
    if not thought:
        return ParsedTrace(None, answer or None, "empty_thought")
    if not answer:
        return ParsedTrace(thought, None, "no_answer")
    return ParsedTrace(thought, answer)


def parse_trace(completion: str | bytes | None, reasoning: str | bytes | None = None) -> ParsedTrace:
    """Split a completion into thought and answer; a rejected trace carries the reason."""
    text = _to_text(completion) or ""
    reasoning = _to_text(reasoning)
    tags = list(_TAG.finditer(text))
    if reasoning is not None and not tags:
        return _finish(reasoning, text)
    if reasoning is not None and reasoning.strip():
        # The server split the reasoning off, yet the content holds tags again: a duplicated thought.
        return ParsedTrace(None, None, "malformed_tags")
    if not tags:
        return ParsedTrace(None, text.strip() or None, "no_thought")
    opens = [m for m in tags if not m.group(1)]
    closes = [m for m in tags if m.group(1)]
    if len(opens) > 1 or len(closes) > 1 or len({m.group(2).lower() for m in tags}) > 1:
        return ParsedTrace(None, None, "malformed_tags")
    if opens and not closes:
        return ParsedTrace(text[opens[0].end():].strip() or None, None, "unterminated_thought")
    close = closes[0]
    if opens and opens[0].start() > close.start():
        return ParsedTrace(None, None, "malformed_tags")
    start = opens[0].end() if opens else 0
    return _finish(text[start:close.start()], text[close.end():])


def normalise(thought: str, answer: str) -> str:
    """The assistant turn every kept trace is trained on."""
    return f"<thought>\n{thought.strip()}\n</thought>\n\n{answer.strip()}"
