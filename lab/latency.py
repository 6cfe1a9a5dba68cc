"""On-device latency of dictation students: ms per clean-up (prompt → cleaned text) and tokens/s on this CPU.

Greedy clean-ups of held-out lab dictation prompts (lab/tasks.py), one at a time as a keyboard sends them, after
one warm-up. Used by the lab's on-device stage and by ``bench/latency.py``.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from distill.ondevice.check import chat_ids, load
from lab.tasks import DICTATION_PROMPT, problems


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



def latency_table(models: list[tuple[str, Path]], prompts: int = 20, level: int = 2, max_new_tokens: int = 160,
                  threads: int = 2) -> str:
    """The side-by-side table: each model's greedy clean-ups of held-out dictation prompts, ratios against the
    first (the baseline, measured in the same run)."""
    import torch

    torch.set_num_threads(threads)
    rows = problems(prompts, 0, held_out=True, task="dictation", level=level)
    lines = [f"{prompts} held-out dictation clean-ups (level {level}) per model, greedy, "
             f"{threads} threads, torch {torch.__version__}; baseline: {models[0][0]}",
             f"{'model':<12} {'p50 ms':>8} {'p95 ms':>8} {'tok/s':>8} {'tok/cleanup':>11} {'exact':>6} "
             f"{'p50 vs base':>11} {'tok/s vs base':>13}"]
    base: dict[str, Any] | None = None
    for name, path in models:
        result = measure(path, rows, max_new_tokens)
        base = base or result
        lines.append(f"{name:<12} {result['p50_ms']:8.1f} {result['p95_ms']:8.1f} {result['tokens_per_s']:8.1f} "
                     f"{result['tokens']:11.1f} {result['exact']:6.2f} {result['p50_ms'] / base['p50_ms']:10.2f}x "
                     f"{result['tokens_per_s'] / base['tokens_per_s']:12.2f}x")
    return "\n".join(lines)
