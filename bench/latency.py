"""On-device latency of a dictation student: ms per clean-up (prompt → cleaned text) and tokens/s on this CPU.

For each model (the first is the baseline, measured in the same run): greedy clean-ups of held-out lab dictation
prompts (lab/tasks.py), one at a time as a keyboard sends them, after one warm-up; prints p50/p95 ms per
clean-up, decode tokens/s, the share of clean-ups whose text after </thought> equals the reference, and the
ratios against the baseline. ``--student`` adds fp32 + its PTQ exports (made here with `distill export-model`'s
code), ``--qad`` a QAT-trained checkpoint exported int4 (the QAT configs' scheme).

    .venv/bin/python bench/latency.py --student out/lab/ondevice/sft --qad out/lab/ondevice/sft-qat --prompts 20
    .venv/bin/python bench/latency.py --model fp32=DIR --model int4=DIR2

Runtimes side by side (lab/runtime_latency.py; ExecuTorch needs `make setup-ondevice`): torch fp32, ExecuTorch
XNNPACK fp32 and 8da4w for a lab student, torch fp32 and ExecuTorch 8da4w for Qwen2-1.5B's shape (random weights);
time to first token, decode tokens/s, ms per clean-up p50/p95, ratios against torch fp32 of the same run.

    .venv/bin/python bench/latency.py --runtimes --student out/lab/ondevice/teacher-500 --shape qwen2-1.5b

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
    parser.add_argument("--runtimes", action="store_true", help="Time the runtimes side by side (--student, --shape).")
    parser.add_argument("--shape", action="append", default=[], choices=["qwen2-1.5b", "qwen2-0.5b"],
                        help="--runtimes: a model shape with random weights (repeatable).")
    parser.add_argument("--prompt-tokens", type=int, default=64, help="--shape: prompt length (system + dictation).")
    parser.add_argument("--new-tokens", type=int, default=64, help="--shape: tokens generated per clean-up.")
    parser.add_argument("--shape-prompts", type=int, default=5, help="--shape: clean-ups timed per runtime.")
    parser.add_argument("--keep", type=Path, help="--runtimes: keep the exported .pte programs here (and reuse them).")
    args = parser.parse_args()
    if args.runtimes:
        from lab.runtime_latency import run

        if not args.student and not args.shape:
            parser.error("--runtimes: give --student DIR and/or --shape NAME")
        print(run(args.student, args.shape, args.prompts, args.level, args.max_new_tokens, args.prompt_tokens,
                  args.new_tokens, args.shape_prompts, args.threads, args.keep,
                  echo=lambda m: print(m, file=sys.stderr)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        models = prepared_models(args, Path(tmp))
        if not models:
            parser.error("give --student, --qad or --model NAME=DIR")
        print(latency_table(models, args.prompts, args.level, args.max_new_tokens, args.threads))


if __name__ == "__main__":
    main()
