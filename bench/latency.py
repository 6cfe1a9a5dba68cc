"""On-device latency of a dictation student: ms per clean-up (prompt → cleaned text) and tokens/s on this CPU.

For each model (the first is the baseline, measured in the same run): greedy clean-ups of held-out lab dictation
prompts (lab/tasks.py), one at a time as a keyboard sends them, after one warm-up; prints p50/p95 ms per
clean-up, decode tokens/s, the share of clean-ups whose text after </thought> equals the reference, and the
ratios against the baseline. ``--student`` adds fp32 + its PTQ exports (made here with `distill export-model`'s
code), ``--qad`` a QAT-trained checkpoint exported int4 (the QAT configs' scheme).

    .venv/bin/python bench/latency.py --student out/lab/ondevice/sft --qad out/lab/ondevice/sft-qat --prompts 20
    .venv/bin/python bench/latency.py --model fp32=DIR --model int4=DIR2

Prints; asserts nothing about times. Exits non-zero only when a model does not load.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lab.latency import latency_table  # noqa: E402


def prepared_models(args: argparse.Namespace, work: Path) -> list[tuple[str, Path]]:
    from distill.ondevice.quantize import quantize_checkpoint

    models: list[tuple[str, Path]] = []
    if args.student:
        models.append(("fp32", args.student))
        for scheme in args.schemes:
            quantize_checkpoint(args.student, work / f"ptq-{scheme}", scheme)
            models.append((f"ptq-{scheme}", work / f"ptq-{scheme}"))
    if args.qad:
        models.append(("qad-fp32", args.qad))
        quantize_checkpoint(args.qad, work / "qad-int4", "int4")
        models.append(("qad-int4", work / "qad-int4"))
    for pair in args.model:
        name, _, path = pair.partition("=")
        models.append((name, Path(path)))
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", type=Path, help="A full-precision student: fp32 + its PTQ exports.")
    parser.add_argument("--schemes", nargs="+", default=["int8", "int4"], choices=["int8", "int4"])
    parser.add_argument("--qad", type=Path, help="A QAT-trained checkpoint (exported int4 here).")
    parser.add_argument("--model", action="append", default=[], help="NAME=DIR, a model folder (repeatable).")
    parser.add_argument("--prompts", type=int, default=20, help="Held-out dictation prompts per model.")
    parser.add_argument("--level", type=int, default=2, help="Dictation level of the prompts.")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (a phone has a few big cores).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = prepared_models(args, Path(tmp))
        if not models:
            parser.error("give --student, --qad or --model NAME=DIR")
        print(latency_table(models, args.prompts, args.level, args.max_new_tokens, args.threads))


if __name__ == "__main__":
    main()
