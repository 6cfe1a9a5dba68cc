"""Random PRMs built locally (no downloads): a tiny qwen-prm-style model for tests, and random models of
real PRM shapes for benchmarks.

A Qwen2.5-Math-PRM outputs logits [batch, seq, 2] and its step reward is softmax(logits)[..., 1] at each
``<extra_0>``; ``Qwen2ForTokenClassification(num_labels=2)`` computes the same kind of output without
remote code, so the tiny model exercises the exact scoring path. ``shape="tiny-vllm"`` has head_dim 64 (vLLM's CPU
attention refuses the 16 of ``tiny``) for tests against a real vLLM server; ``causal_lm=True`` builds a
math-shepherd-style PRM instead (a Qwen2ForCausalLM whose ``+``/``-`` logits at each step tag are the reward).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from testing.tiny_model import build_tiny_model

# Qwen2.5-Math-PRM-7B's config (Qwen2 backbone); the vocabulary is the padded Qwen2.5 one.
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2},
    "tiny-vllm": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
                  "num_key_value_heads": 1},
    "qwen2.5-math-prm-7b": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                            "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                            "rope_theta": 10000.0, "rms_norm_eps": 1e-6},
}


def build_tiny_prm(out_dir: str | Path, seed: int = 0, shape: str = "tiny", causal_lm: bool = False) -> Path:
    """A random 2-layer Qwen2 token classifier (2 labels), or causal LM, with the tiny tokenizer (idempotent)."""
    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists() and (out_dir / "tokenizer.json").exists():
        return out_dir
    import torch
    from transformers import AutoTokenizer, Qwen2ForCausalLM, Qwen2ForTokenClassification

    lm_dir = build_tiny_model(out_dir.parent / f"{out_dir.name}-lm")
    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    torch.manual_seed(seed)
    model_cls = Qwen2ForCausalLM if causal_lm else Qwen2ForTokenClassification
    model = model_cls(random_config(shape, len(tokenizer), tokenizer.pad_token_id))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    shutil.rmtree(lm_dir, ignore_errors=True)
    return out_dir


def random_config(shape: str, vocab_size: int | None = None, pad_token_id: int | None = 0) -> Any:
    """A Qwen2Config of a known shape with two labels (the PRM head)."""
    from transformers import Qwen2Config

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; use one of {', '.join(SHAPES)}")
    fields = {"max_position_embeddings": 4096, "tie_word_embeddings": False, **SHAPES[shape]}
    if vocab_size is not None and "vocab_size" not in SHAPES[shape]:
        fields["vocab_size"] = vocab_size
    return Qwen2Config(num_labels=2, pad_token_id=pad_token_id, bos_token_id=None, **fields)
