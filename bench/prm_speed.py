"""PRM scoring speed: the scorer against the bare forward pass, and batched against one trace at a time.

All three measurements in one run, on the same traces (the labelled mini set's steps, each trace
extended by a seeded random number of extra steps so lengths vary) and the same model:

- ``bare``: only ``model(input_ids, attention_mask)`` on the same length-sorted padded batches,
  pre-tokenized and already on the device: the ceiling;
- ``scorer``: ``PrmScorer.step_rewards`` end to end (tokenize, find the tags, batch, forward, read rewards);
- ``single``: the scorer with ``batch_size=1`` (one trace per forward pass).

Tokens/s counts real (unpadded) tokens. ``--shape qwen2.5-math-prm-7b`` builds a random model of that
shape from its config (no download) for a GPU run:

    .venv/bin/python bench/prm_speed.py                                     # CPU, tiny random model
    .venv/bin/python bench/prm_speed.py --device cuda --shape qwen2.5-math-prm-7b --traces 512 --extra-steps 40
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pipelines.spec import PrmConfig  # noqa: E402
from prm.backend_transformers import TransformersBackend, pick_dtype  # noqa: E402
from prm.encode import encode_trace, length_batches, load_tokenizer  # noqa: E402
from prm.evaluate import MINI_SET, load_labelled  # noqa: E402
from prm.scorer import PrmScorer  # noqa: E402
from testing.tiny_prm import build_tiny_prm, random_config  # noqa: E402


def workload(count: int, max_extra: int, seed: int) -> list[tuple[str, list[str]]]:
    """``count`` (problem, steps) pairs from the mini set, each with 0..max_extra extra steps."""
    rng = random.Random(seed)
    traces = load_labelled(MINI_SET)
    pool = [step for t in traces for step in t.steps]
    items = []
    for i in range(count):
        trace = traces[i % len(traces)]
        items.append((trace.problem, trace.steps + rng.sample(pool, rng.randint(0, min(max_extra, len(pool))))))
    return items


def build_model(shape: str, style: str, model_dir: Path, vocab: int, pad_id: int, device: str, dtype: Any) -> Any:
    """The tiny saved PRM, or a random model of a real PRM's shape built directly on the device."""
    from transformers import AutoModelForTokenClassification, Qwen2ForTokenClassification

    if shape == "tiny":
        return AutoModelForTokenClassification.from_pretrained(model_dir, dtype=dtype,
                                                               attn_implementation="sdpa").to(device).eval()
    config = random_config(shape, vocab, pad_id)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen2ForTokenClassification(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def timed(fns: dict[str, Any], repeats: int) -> dict[str, float]:
    """Best wall time of each function over ``repeats`` rounds after a warm-up; the rounds interleave the
    functions so that a load change on a shared machine hits all of them alike."""
    best = {name: float("inf") for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def bare_forward(backend: TransformersBackend, encoded: list[Any], cfg: PrmConfig) -> Any:
    """A closure running only the model on the scorer's own batches, inputs prepared beforehand."""
    lengths = [len(t.input_ids) for t in encoded]
    batches = []
    for batch in length_batches(lengths, cfg.batch_size, cfg.max_batch_tokens):
        width = max(lengths[i] for i in batch)
        ids = torch.full((len(batch), width), backend.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, i in enumerate(batch):
            ids[r, :lengths[i]] = torch.tensor(encoded[i].input_ids)
            mask[r, :lengths[i]] = 1
        batches.append((ids.to(backend.device), mask.to(backend.device)))

    def run() -> None:
        with torch.inference_mode():
            for ids, mask in batches:
                backend.model(input_ids=ids, attention_mask=mask)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", default="tiny", choices=["tiny", "qwen2.5-math-prm-7b"])
    parser.add_argument("--traces", type=int, default=256)
    parser.add_argument("--extra-steps", type=int, default=12, help="Up to this many extra steps per trace.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-batch-tokens", type=int, default=65536)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--single-traces", type=int, default=64, help="Traces for the one-at-a-time baseline.")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model_dir = build_tiny_prm(Path(tempfile.gettempdir()) / "distill-bench-tiny-prm")
    cfg = PrmConfig(model=str(model_dir), style="qwen-prm", device=args.device, batch_size=args.batch_size,
                    max_batch_tokens=args.max_batch_tokens, max_tokens=1 << 20)
    tokenizer = load_tokenizer(cfg)
    dtype = pick_dtype("auto", args.device)
    model = build_model(args.shape, cfg.style, model_dir, len(tokenizer), tokenizer.pad_token_id, args.device, dtype)
    backend = TransformersBackend(cfg, tokenizer, model=model)
    items = workload(args.traces, args.extra_steps, args.seed)
    encoded = [encode_trace(tokenizer, cfg, problem, steps) for problem, steps in items]
    tokens = sum(len(t.input_ids) for t in encoded)

    scorer = PrmScorer(cfg, backend=backend, tokenizer=tokenizer)
    single_cfg = cfg.model_copy(update={"batch_size": 1})
    single_items = items[:args.single_traces]
    single_tokens = sum(len(t.input_ids) for t in encoded[:args.single_traces])
    single = PrmScorer(single_cfg, backend=TransformersBackend(single_cfg, tokenizer, model=model), tokenizer=tokenizer)
    best = timed({"bare": bare_forward(backend, encoded, cfg), "scorer": lambda: scorer.step_rewards(items),
                  "single": lambda: single.step_rewards(single_items)}, args.repeats)
    bare_s, scorer_s, single_s = best["bare"], best["scorer"], best["single"]

    result = {
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(0),
        "shape": args.shape, "dtype": str(dtype).removeprefix("torch."), "threads": args.threads,
        "traces": len(items), "tokens": tokens, "mean_tokens_per_trace": round(tokens / len(items), 1),
        "steps": sum(len(s) for _, s in items), "batch_size": args.batch_size,
        "bare_tokens_per_s": round(tokens / bare_s, 1),
        "scorer_tokens_per_s": round(tokens / scorer_s, 1), "scorer_traces_per_s": round(len(items) / scorer_s, 1),
        "single_tokens_per_s": round(single_tokens / single_s, 1),
        "single_traces_per_s": round(len(single_items) / single_s, 1),
    }
    result["scorer_vs_bare"] = round(result["scorer_tokens_per_s"] / result["bare_tokens_per_s"], 3)
    result["batched_vs_single"] = round(result["scorer_tokens_per_s"] / result["single_tokens_per_s"], 2)
    print(f"PRM scoring on {result['device']} ({args.shape}, {result['dtype']}): {len(items)} traces, "
          f"{tokens} tokens (mean {result['mean_tokens_per_trace']}/trace), batch {args.batch_size}")
    print(f"  bare forward pass   {result['bare_tokens_per_s']:>12,.0f} tokens/s")
    print(f"  scorer (batched)    {result['scorer_tokens_per_s']:>12,.0f} tokens/s  "
          f"{result['scorer_traces_per_s']:>9,.1f} traces/s  = {result['scorer_vs_bare']:.2f} x bare")
    print(f"  one trace at a time {result['single_tokens_per_s']:>12,.0f} tokens/s  "
          f"{result['single_traces_per_s']:>9,.1f} traces/s  -> batched is {result['batched_vs_single']:.1f}x faster")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
