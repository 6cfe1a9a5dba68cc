"""On-device runtimes side by side: torch fp32 (the baseline), ExecuTorch XNNPACK (8da4w, and fp32 for small
models), llama.cpp when llama-cpp-python is installed; time to first token, decode tokens/s, ms per clean-up.

Every runtime runs the same greedy loop (``distill.ondevice.executorch_runtime.timed_greedy``: a prefill of the
prompt, then one token per step through the KV cache) on the same prompt ids, one clean-up at a time, after one
untimed warm-up, on ``threads`` CPU threads. A lab student gets its held-out dictation prompts (an end-of-turn
token ends a clean-up); a model shape (``qwen2-1.5b``: Qwen2-1.5B's config, random weights, as timing needs no
trained weights) gets random prompt ids of a fixed length and always decodes ``new_tokens`` tokens.
"""

from __future__ import annotations

import statistics
import tempfile
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from distill.ondevice.executorch import export_pte, generate_pte
from distill.ondevice.executorch_runtime import load_model, timed_greedy
from lab.latency import percentile

# Qwen2-1.5B / Qwen2-0.5B (their config.json on the Hub; Qwen2.5's are the same shapes)
SHAPES: dict[str, dict[str, Any]] = {
    "qwen2-1.5b": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                   "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936},
    "qwen2-0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                   "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936},
}


def shape_config(name: str, folder: Path) -> Path:
    """config.json of a named shape (tied embeddings, rope theta 1e6, as Qwen2's small models)."""
    from transformers import Qwen2Config

    config = Qwen2Config(**SHAPES[name], tie_word_embeddings=True, rope_theta=1_000_000.0,
                         max_position_embeddings=32768, eos_token_id=151645, pad_token_id=151643)
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    return folder / "config.json"


def torch_runs(source: Path, prompts: list[list[int]], new_tokens: int, eos_ids: set[int], threads: int
               ) -> list[dict[str, Any]]:
    """transformers' fp32 model (a DynamicCache, only the last position's logits) through the shared loop."""
    import torch
    from transformers import DynamicCache

    torch.set_num_threads(threads)
    model = load_model(str(source))
    state: dict[str, Any] = {}

    def step(ids: list[int], start: int) -> Any:
        if start == 0:
            state["cache"] = DynamicCache(config=model.config)
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([ids]), past_key_values=state["cache"], use_cache=True,
                        logits_to_keep=1)
        return out.logits[0, -1]

    timed_greedy(step, prompts[0], min(new_tokens, 8), eos_ids)
    return [timed_greedy(step, prompt, new_tokens, eos_ids) for prompt in prompts]


def summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    decode_tokens = sum(max(len(r["tokens"]) - 1, 0) for r in runs)
    decode_s = sum(r["decode_ms"] for r in runs) / 1000
    totals = [r["total_ms"] for r in runs]
    return {"ttft_p50_ms": statistics.median(r["ttft_ms"] for r in runs),
            "decode_tok_s": decode_tokens / decode_s if decode_s else float("nan"),
            "e2e_p50_ms": statistics.median(totals), "e2e_p95_ms": percentile(totals, 95),
            "tokens": sum(len(r["tokens"]) for r in runs) / len(runs)}


def agreement(runs: list[dict[str, Any]], reference: list[dict[str, Any]]) -> float:
    same = sum(sum(a == b for a, b in zip(r["tokens"], f["tokens"], strict=False)) for r, f in zip(runs, reference,
                                                                                                    strict=True))
    return same / max(sum(max(len(r["tokens"]), len(f["tokens"]), 1) for r, f in zip(runs, reference, strict=True)),
                      1)


def compare(source: Path, prompts: list[list[int]], new_tokens: int, eos_ids: set[int], threads: int,
            schemes: list[str], work: Path, max_seq_len: int, echo: Any = print) -> dict[str, dict[str, Any]]:
    """Each runtime's summary (the first is torch fp32); ExecuTorch programs are exported to ``work`` first."""
    results: dict[str, dict[str, Any]] = {}
    ptes = {}
    for scheme in schemes:  # export before the baseline loads: one large model in memory at a time
        pte = work / f"{scheme}.pte"
        if pte.exists():  # a kept work folder (--keep): the program of an earlier run
            echo(f"  reusing {pte}")
            ptes[scheme] = {"bytes": pte.stat().st_size}
            continue
        echo(f"  exporting ExecuTorch {scheme} …")
        ptes[scheme] = export_pte(source, pte, scheme, max_seq_len=max_seq_len)
    echo("  torch fp32 …")
    baseline = torch_runs(source, prompts, new_tokens, eos_ids, threads)
    results["torch fp32"] = {**summary(baseline), "bytes": None}
    for scheme, info in ptes.items():
        echo(f"  ExecuTorch {scheme} …")
        runs = generate_pte(work / f"{scheme}.pte", prompts, new_tokens, sorted(eos_ids), threads)["runs"]
        results[f"ExecuTorch XNNPACK {scheme}"] = {**summary(runs), "bytes": info["bytes"],
                                                   "agreement": agreement(runs, baseline)}
    if find_spec("llama_cpp") is None:
        echo("  llama.cpp: llama-cpp-python not installed (it builds llama.cpp from source); not timed")
    return results


def table(title: str, results: dict[str, dict[str, Any]]) -> str:
    base = results["torch fp32"]
    lines = [title, f"{'runtime':<26} {'TTFT p50':>9} {'decode':>8} {'e2e p50':>9} {'e2e p95':>9} {'tok/':>6} "
                    f"{'e2e':>7} {'decode':>7} {'agree':>6} {'file':>9}",
             f"{'':<26} {'ms':>9} {'tok/s':>8} {'ms':>9} {'ms':>9} {'clean':>6} {'vs fp32':>7} {'vs fp32':>7} "
             f"{'fp32':>6} {'MB':>9}"]
    for name, r in results.items():
        size = f"{r['bytes'] / 1e6:9.1f}" if r.get("bytes") else f"{'':>9}"
        agree = f"{r['agreement']:6.2f}" if "agreement" in r else f"{'':>6}"
        lines.append(f"{name:<26} {r['ttft_p50_ms']:9.1f} {r['decode_tok_s']:8.1f} {r['e2e_p50_ms']:9.1f} "
                     f"{r['e2e_p95_ms']:9.1f} {r['tokens']:6.1f} {r['e2e_p50_ms'] / base['e2e_p50_ms']:6.2f}x "
                     f"{r['decode_tok_s'] / base['decode_tok_s']:6.2f}x {agree} {size}")
    return "\n".join(lines)


def student_prompts(model_dir: Path, count: int, level: int) -> tuple[list[list[int]], set[int]]:
    """Held-out dictation prompts in the student's chat format, and its end-of-turn id."""
    from distill.ondevice.check import chat_ids, load
    from lab.tasks import DICTATION_PROMPT, problems

    _, tokenizer = load(model_dir)
    rows = problems(count, 0, held_out=True, task="dictation", level=level)
    ids = [chat_ids(tokenizer, DICTATION_PROMPT, row["question"])["input_ids"][0].tolist() for row in rows]
    return ids, {int(tokenizer.eos_token_id)}


def run(student: Path | None, shapes: list[str], prompts: int, level: int, max_new_tokens: int, prompt_tokens: int,
        new_tokens: int, shape_prompts: int, threads: int, keep: Path | None = None, echo: Any = print) -> str:
    """The tables; ``keep``: the folder for the exported programs, kept and reused by the next run."""
    import random

    import torch

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        work = keep or Path(tmp)
        if student:
            ids, eos = student_prompts(student, prompts, level)
            echo(f"{student}: {prompts} held-out dictation clean-ups")
            results = compare(student, ids, max_new_tokens, eos, threads, ["fp32", "8da4w"], work / "student",
                              max_seq_len=512, echo=echo)
            out.append(table(f"lab dictation student {student.name}: {prompts} held-out clean-ups (level {level}), "
                             f"greedy ≤ {max_new_tokens} tokens, {threads} threads, torch {torch.__version__}",
                             results))
        for name in shapes:
            config = shape_config(name, work / name)
            vocab = SHAPES[name]["vocab_size"]
            rng = random.Random(0)
            ids = [[rng.randrange(vocab) for _ in range(prompt_tokens)] for _ in range(shape_prompts)]
            echo(f"{name} (random weights): {shape_prompts} prompts of {prompt_tokens} tokens, {new_tokens} new each")
            results = compare(config, ids, new_tokens, set(), threads, ["8da4w"], work / name,
                              max_seq_len=prompt_tokens + new_tokens + 16, echo=echo)
            out.append(table(f"{name} shape, random weights: {shape_prompts} clean-ups of {prompt_tokens} prompt "
                             f"+ {new_tokens} generated tokens, {threads} threads", results))
    return "\n\n".join(out)
