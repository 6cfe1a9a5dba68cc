"""Milliseconds per clean-up for a 1.5B student on the seed's devices (issue 26, parts 3-4).

A clean-up is one prefill of the prompt, then one decode step per generated token:
``ms = prompt_tokens / prefill_tok_s + new_tokens * 1000 / decode_tok_s``. Decode is memory-bandwidth bound (each
step reads every linear weight once), prefill compute bound. The model is Qwen2-1.5B in 8da4w / Q4_0 (4 bits and
a 16-bit scale per 32 weights: 4.5 bits): 1.54 G weights read per token (the 1.31 G linear parameters and the tied
233 M output head), 2 x 1.31 G FLOPs per prompt token. Each device's effective bandwidth and FLOP rate come from a
published run of the same kind of runtime (docs/benchmarks.md, "Projection", with the sources and the
assumptions); ``this VM`` is this machine's own ExecuTorch 8da4w measurement at the 1.5B shape
(`bench/latency.py --runtimes --shape qwen2-1.5b`).

The lab's students count tokens with the lab's word-level tokenizer (a word or a punctuation mark a token);
Qwen2's byte-level BPE spends about one token on a common English word as well, so the counts carry over only
roughly: the tables say which tokenizer counted.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUDGET_MS = 450.0  # the seed's promise: a dictation clean-up on the device in 450 ms
PROMPT_TOKENS = 64  # the system prompt and the dictation, as the projection in docs/benchmarks.md

# Qwen2-1.5B: 1536 wide, 28 layers, 8960 intermediate, 12 query and 2 KV heads of 128, vocabulary 151,936
_LINEAR = 28 * (1536 * 1536 * 2 + 1536 * 256 * 2 + 3 * 1536 * 8960)  # q, o; k, v; gate, up, down
_HEAD = 151_936 * 1536  # the tied embedding, read as the output head every step
BYTES_PER_TOKEN = (_LINEAR + _HEAD) * 4.5 / 8
FLOPS_PER_PROMPT_TOKEN = 2 * _LINEAR


@dataclass(frozen=True)
class Device:
    name: str
    bandwidth_gb_s: float  # effective bytes of weights read per second in decode
    tflop_s: float  # effective prefill rate
    source: str

    @property
    def decode_tok_s(self) -> float:
        return self.bandwidth_gb_s * 1e9 / BYTES_PER_TOKEN

    @property
    def prefill_tok_s(self) -> float:
        return self.tflop_s * 1e12 / FLOPS_PER_PROMPT_TOKEN

    def ms(self, new_tokens: float, prompt_tokens: float = PROMPT_TOKENS) -> float:
        return 1000 * prompt_tokens / self.prefill_tok_s + 1000 * new_tokens / self.decode_tok_s

    def tokens_within(self, budget_ms: float = BUDGET_MS, prompt_tokens: float = PROMPT_TOKENS) -> int:
        left = budget_ms - 1000 * prompt_tokens / self.prefill_tok_s
        return max(0, int(left * self.decode_tok_s / 1000))


DEVICES = (
    Device("M3 laptop, GPU (llama.cpp Metal)", 84.0, 2.3,
           "llama.cpp #4167: Llama-2-7B Q4_0 tg 21.91 tok/s, pp512 179.6 tok/s on a 100 GB/s, 10-core M2/M3 GPU"),
    Device("M3 laptop, CPU (XNNPACK)", 46.0, 0.84,
           "LiteRT-LM README: Gemma3-1B int4 on a MacBook Pro M3 CPU, decode 83.0 tok/s, prefill 603.8 tok/s"),
    Device("Galaxy S24 Ultra, CPU (XNNPACK)", 31.0, 0.53,
           "LiteRT-LM README: Gemma3-1B int4 on a Galaxy S24 Ultra CPU, decode 55.9 tok/s, prefill 379.7 tok/s"),
    Device("this VM, 2 cores (ExecuTorch 8da4w, measured)", 13.9 * BYTES_PER_TOKEN / 1e9,
           64 * FLOPS_PER_PROMPT_TOKEN / 0.4521 / 1e12,
           "bench/latency.py --runtimes --shape qwen2-1.5b: 13.9 tok/s decode, 452 ms to the first token of 64"),
)


def arm_points(results: dict[str, Any], arms: list[str], seeds: list[int]) -> dict[str, dict[str, Any]]:
    """Per arm: pass@1, chrF and tokens per answer, each the mean over the arm's seeds (and the per-seed values),
    from `distill eval`'s results.json."""
    from lab.config import model_name

    (set_name,) = results["sets"]
    points: dict[str, dict[str, Any]] = {}
    for arm in arms:
        per_seed: dict[str, list[float]] = {"pass@1": [], "chrf": [], "tokens": []}
        for seed in seeds:
            run = results["runs"].get(model_name(arm, seed, len(seeds)), {}).get(set_name)
            if run is None:
                continue
            head = run["clean"] or run["all"]
            tokens = head.get("tokens")
            values = {"pass@1": head.get("pass@1"), "chrf": head.get("chrf"),
                      "tokens": tokens.get("mean") if isinstance(tokens, dict) else tokens}
            if any(v is None for v in values.values()):
                continue
            for key, value in values.items():
                per_seed[key].append(float(value))
        if per_seed["tokens"]:
            points[arm] = {key: statistics.mean(v) for key, v in per_seed.items()} | {"per_seed": per_seed}
    return points


def projection_markdown(points: dict[str, dict[str, Any]], plot: Path | None = None,
                        devices: tuple[Device, ...] = DEVICES) -> str:
    """ms per clean-up of each arm on each device, whether it fits 450 ms, and per device the arm that fits with
    the best held-out pass@1 (chrF breaking ties)."""
    if not points:
        return ""
    head = ["arm", "pass@1", "chrF", "tokens/answer"] + [d.name for d in devices]
    lines = ["", f"Milliseconds per clean-up for a 1.5B student (8da4w) writing each arm's tokens per answer after a "
                 f"{PROMPT_TOKENS}-token prompt (lab/projection.py; tokens counted by the lab's word-level "
                 f"tokenizer); ✓ within {BUDGET_MS:.0f} ms:", "",
             "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for arm, p in points.items():
        cells = [arm, f"{p['pass@1']:.1%}", f"{p['chrf']:.3f}", f"{p['tokens']:.1f}"]
        for d in devices:
            ms = d.ms(p["tokens"])
            cells.append(f"{ms:,.0f}" + (" ✓" if ms <= BUDGET_MS else ""))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| device | decode tok/s | prefill of 64 tokens, ms | tokens within 450 ms | "
                  "best arm within 450 ms |", "|---|---|---|---|---|"]
    for d in devices:
        fits = [(p["pass@1"], p["chrf"], arm) for arm, p in points.items() if d.ms(p["tokens"]) <= BUDGET_MS]
        best = max(fits)[2] if fits else "none"
        lines.append(f"| {d.name} | {d.decode_tok_s:.1f} | {1000 * PROMPT_TOKENS / d.prefill_tok_s:.0f} | "
                     f"{d.tokens_within()} | {best} |")
    if plot is not None:
        plot_projection(points, plot, devices)
        lines.append(f"\n![accuracy against ms per clean-up]({plot})")
    return "\n".join(lines) + "\n"


def plot_projection(points: dict[str, dict[str, Any]], path: Path, devices: tuple[Device, ...] = DEVICES) -> Path:
    """Held-out pass@1 against ms per clean-up: one marker per arm and device, the 450 ms line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = "osD^v"
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for i, (arm, p) in enumerate(points.items()):
        xs = [d.ms(p["tokens"]) for d in devices]
        ax.scatter(xs, [100 * p["pass@1"]] * len(xs), marker=markers[i % len(markers)], label=arm, zorder=3)
    for d in devices:
        ax.annotate(d.name.split(" (")[0], (d.ms(max(p["tokens"] for p in points.values())),
                                            100 * min(p["pass@1"] for p in points.values())),
                    fontsize=6, rotation=60, ha="left", va="bottom", color="gray")
    ax.axvline(BUDGET_MS, color="tab:red", linestyle="--", linewidth=1, label="450 ms")
    ax.set_xscale("log")
    ax.set_xlabel("ms per clean-up, 1.5B 8da4w (projected; log scale)")
    ax.set_ylabel("held-out pass@1 (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
