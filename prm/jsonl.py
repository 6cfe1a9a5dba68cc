"""The one JSONL reader: every floor that reads a JSON-lines file a user wrote goes through it, so a bad line is
always the same one-line error, naming the option, the file and the line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prm.config import SpecError


def json_lines(path: Path, flag: str | None = None, text: str | None = None) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of each non-blank line of ``path`` (or of ``text``, read from it); a line that
    is not JSON raises a SpecError naming ``flag`` (when given), the file and the line."""
    if text is None:
        text = path.read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SpecError(f"{flag + ': ' if flag else ''}{path}:{number}: not valid JSON ({exc.msg}); fix or "
                            "remove that line") from None
        yield number, value
