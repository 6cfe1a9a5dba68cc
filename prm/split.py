"""Split a thought into reasoning steps.

The split is a partition: every character of the thought belongs to exactly one step, so
``"".join(split_steps(t)) == t``. A step keeps the whitespace that ends it; the scorers strip it.
"""

from __future__ import annotations

import re
from itertools import pairwise

BLANK_LINES = re.compile(r"\n[ \t]*\n\s*")
STEP_MARKER = re.compile(r"(?im)^[ \t]*(?:\*\*)?step[ \t]*\d+[ \t]*(?:\*\*)?[ \t]*[:.)\-]")
LINE_END = re.compile(r"\n+")
MODES = ("auto", "blank_lines", "step_markers", "lines", "regex")


def _cuts(thought: str, mode: str, pattern: str | None) -> set[int]:
    """Character offsets where a new step starts."""
    if mode == "regex":
        if not pattern:
            raise ValueError("split mode 'regex' needs a pattern")
        return {m.end() for m in re.finditer(pattern, thought) if m.end() > m.start()}
    cuts: set[int] = set()
    if mode in ("auto", "blank_lines"):
        cuts |= {m.end() for m in BLANK_LINES.finditer(thought)}
    if mode in ("auto", "step_markers"):
        cuts |= {m.start() for m in STEP_MARKER.finditer(thought)}
    if mode == "lines":
        cuts |= {m.end() for m in LINE_END.finditer(thought)}
    if mode not in MODES:
        raise ValueError(f"unknown split mode {mode!r}; use one of {', '.join(MODES)}")
    return cuts


def split_steps(thought: str | None, mode: str = "auto", pattern: str | None = None) -> list[str]:
    """The steps of ``thought``, verbatim; whitespace-only pieces join the step before (or after) them.

    ``auto`` starts a step after each blank line and at each "Step k:" marker; ``blank_lines``,
    ``step_markers`` and ``lines`` use one rule; ``regex`` ends a step after each match of ``pattern``.
    """
    if not thought or not thought.strip():
        return []
    bounds = sorted({0, len(thought)} | {c for c in _cuts(thought, mode, pattern) if 0 < c < len(thought)})
    steps: list[str] = []
    pending = ""  # leading whitespace before the first real step
    for start, end in pairwise(bounds):
        piece = thought[start:end]
        if piece.strip():
            steps.append(pending + piece)
            pending = ""
        elif steps:
            steps[-1] += piece
        else:
            pending += piece
    return steps
