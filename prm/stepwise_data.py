"""Math-Shepherd labels (``distill prm-label``'s ``labels.jsonl``) → the file Axolotl's ``stepwise_supervised`` reads.

A row of ``labels.jsonl`` is TRL's stepwise format plus the soft labels: ``{"prompt", "completions": [steps],
"labels": [bool], "soft_labels": [float in 0..1], "id", ...}``. Hard labels say that at least one of the teacher's
continuations from the step prefix reached the gold answer; ``soft`` turns the fraction into a majority vote
(``soft_label >= 0.5``). Axolotl 0.19 casts the labels to int64 and trains a 2-class cross-entropy, so the file
holds booleans either way: soft targets themselves cannot be trained without a custom loss.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from prm.config import SpecError

LabelMode = Literal["hard", "soft"]
SOFT_CUT = 0.5


def parse_row(raw: str, where: str, mode: LabelMode) -> dict[str, Any]:
    """One labels.jsonl line → ``{"id", "prompt", "completions", "labels"}`` with the chosen boolean labels."""
    try:
        row = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SpecError(f"--data: {where}: not JSON ({exc.msg}); each line is one prm-label row") from None
    if not isinstance(row, dict):
        raise SpecError(f"--data: {where}: a row is a JSON object with prompt, completions, labels")
    prompt, steps = row.get("prompt"), row.get("completions")
    if not isinstance(prompt, str) or not prompt.strip():
        raise SpecError(f"--data: {where}: `prompt` must be the problem text")
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
        raise SpecError(f"--data: {where}: `completions` must be a non-empty list of step strings")
    key = "labels" if mode == "hard" else "soft_labels"
    values = row.get(key)
    if not isinstance(values, list) or len(values) != len(steps):
        count = len(values) if isinstance(values, list) else "no"
        raise SpecError(f"--data: {where}: `{key}` has {count} entries for {len(steps)} completions; "
                        + ("give one per step" if mode == "hard" else "use --labels hard or relabel with soft_labels"))
    if mode == "hard":
        if not all(isinstance(v, bool) for v in values):
            raise SpecError(f"--data: {where}: `labels` must be booleans (true: a continuation reaches the gold)")
        labels = list(values)
    else:
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in values):
            raise SpecError(f"--data: {where}: `soft_labels` must be fractions in 0..1")
        labels = [v >= SOFT_CUT for v in values]
    return {"id": str(row.get("id", where)), "prompt": prompt, "completions": steps, "labels": labels}


def read_labels(path: Path, mode: LabelMode) -> list[dict[str, Any]]:
    """Every row of a labels.jsonl with the chosen boolean labels; errors name the file and line."""
    if not path.is_file():
        raise SpecError(f"--data: {path} not found; `distill prm-label IN --out DIR` writes DIR/labels.jsonl")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise SpecError(f"--data: {path}: not UTF-8 text") from None
    rows = [parse_row(line, f"{path}:{n}", mode) for n, line in enumerate(lines, 1) if line.strip()]
    if not rows:
        raise SpecError(f"--data: {path} has no rows")
    return rows


def write_stepwise(labels_path: Path, mode: LabelMode, out_dir: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """Write ``stepwise-<mode>.jsonl`` (next to labels.jsonl by default); returns it and what it holds."""
    rows = read_labels(labels_path, mode)
    out = (out_dir or labels_path.parent) / f"stepwise-{mode}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    steps = sum(len(r["labels"]) for r in rows)
    positive = sum(sum(r["labels"]) for r in rows)
    return out, {"rows": len(rows), "steps": steps, "positive_steps": positive, "labels": mode}
