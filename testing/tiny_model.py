"""A tiny random Qwen2 model and a byte-level BPE tokenizer with a ChatML template, built locally.

Used by the tests: it exercises every code path in seconds, and its output is plumbing, not reasoning
(the lab's teachers, ``lab/``, really reason).
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<extra_0>"]
CORPUS = [
    "<thought>\nStep 1: add the numbers. 2 + 3 = 5 ки\n\nStep 2: check it.\n</thought>\n\n\\boxed{5}",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "um so I I think we should uh meet on on Monday no Tuesday at three",
    "The answer is \\frac{1}{2} because one half is 0.5 and - + ки are step tags.",
    "You are a careful reasoner. First think step by step inside <thought>...</thought>.",
    "system user assistant question answer problem solution the a of to and in is it",
    " ки ки ки ки ки ки ки ки ки ки ки ки <thought> </thought> <think> </think> Step 1: Step 2: Step 3:",
    "0 1 2 3 4 5 6 7 8 9 10 12 15 20 42 48 72 100 + - * / = ( ) { } [ ] . , ; : ? !",
]


def build_tokenizer(out_dir: Path):
    """Train a byte-level BPE on a few sentences; any text (and any bytes) stays encodable."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a random 2-layer Qwen2 model and its tokenizer to ``out_dir`` (idempotent)."""
    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists() and (out_dir / "tokenizer.json").exists():
        return out_dir
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out_dir)
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out_dir)
    return out_dir
