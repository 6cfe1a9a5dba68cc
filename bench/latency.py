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
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lab.tasks import DICTATION_PROMPT, problems  # noqa: E402
from pipelines.ondevice.check import chat_ids, load  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def cleaned(text: str) -> str:
    return text.split("</thought>")[-1].strip()


def measure(model_dir: Path, rows: list[dict[str, str]], max_new_tokens: int) -> dict[str, Any]:
    import torch

    model, tokenizer = load(model_dir)
    timings, tokens, exact = [], 0, 0
    for i, row in enumerate([rows[0], *rows]):  # the first is a warm-up, not counted
        inputs = chat_ids(tokenizer, DICTATION_PROMPT, row["question"])
        start = time.perf_counter()
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        elapsed = time.perf_counter() - start
        new = output[0, inputs["input_ids"].shape[1]:]
        if i == 0:
            continue
        timings.append(elapsed * 1000)
        tokens += len(new)
        exact += cleaned(tokenizer.decode(new, skip_special_tokens=True)) == row["answer"]
    return {"p50_ms": statistics.median(timings), "p95_ms": percentile(timings, 95),
            "tokens_per_s": tokens / (sum(timings) / 1000), "tokens": tokens / len(rows), "exact": exact / len(rows)}


def prepared_models(args: argparse.Namespace, work: Path) -> list[tuple[str, Path]]:
    from pipelines.ondevice.quantize import quantize_checkpoint

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
    import torch

    torch.set_num_threads(args.threads)
    rows = problems(args.prompts, 0, held_out=True, task="dictation", level=args.level)
    with tempfile.TemporaryDirectory() as tmp:
        models = prepared_models(args, Path(tmp))
        if not models:
            parser.error("give --student, --qad or --model NAME=DIR")
        print(f"{args.prompts} held-out dictation clean-ups (level {args.level}) per model, greedy, "
              f"{args.threads} threads, torch {torch.__version__}; baseline: {models[0][0]}")
        print(f"{'model':<12} {'p50 ms':>8} {'p95 ms':>8} {'tok/s':>8} {'tok/cleanup':>11} {'exact':>6} "
              f"{'p50 vs base':>11} {'tok/s vs base':>13}")
        base: dict[str, Any] | None = None
        for name, path in models:
            result = measure(path, rows, args.max_new_tokens)
            base = base or result
            print(f"{name:<12} {result['p50_ms']:8.1f} {result['p95_ms']:8.1f} {result['tokens_per_s']:8.1f} "
                  f"{result['tokens']:11.1f} {result['exact']:6.2f} {result['p50_ms'] / base['p50_ms']:10.2f}x "
                  f"{result['tokens_per_s'] / base['tokens_per_s']:12.2f}x")


if __name__ == "__main__":
    main()
