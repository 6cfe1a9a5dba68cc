"""Train a tiny teacher from scratch on CPU that really reasons: ``<thought>`` steps, then the answer.

The model is a Qwen2 (head_dim 64, so vLLM's CPU attention serves it) with a byte-level BPE tokenizer that
splits digits one by one, ChatML, and ``<think>``/``</think>``/``<thought>``/``</thought>`` as added tokens
(vLLM's ``deepseek_r1`` reasoning parser looks them up). ``tag="think"`` makes an R1-style teacher that writes
``<think>…</think>`` whatever the prompt asks (a two-layer model does not learn to switch tags from the
system prompt in a few hundred steps), so the factory's normalisation and vLLM's reasoning parser get real work.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from lab.tasks import THOUGHT_TAGS, examples, get_task
from testing.tiny_model import CHAT_TEMPLATE

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TAG_TOKENS = ["<think>", "</think>", "<thought>", "</thought>"]
SHAPE = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
         "num_key_value_heads": 2, "max_position_embeddings": 1024}


def build_tokenizer(corpus: list[str], vocab_size: int = 320) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None)
    fast.add_tokens(TAG_TOKENS)  # not special: they stay in decoded text, where the parsers read them
    fast.chat_template = CHAT_TEMPLATE
    return fast


def conversation(system: str, problem: str, solution: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": problem},
            {"role": "assistant", "content": solution}]


def encode_example(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids and labels: only the assistant content and its end-of-turn token are trained."""
    full = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=True, return_dict=False,
                                           add_generation_prompt=True)
    full, prompt = list(full), list(prompt)
    labels = [-100] * len(prompt) + full[len(prompt):]
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    last = max(i for i, t in enumerate(full) if t == end)
    labels[last + 1:] = [-100] * (len(full) - last - 1)  # the template's trailing newline
    return full, labels


VOCAB = {"addition": 320, "dictation": 700}  # dictation's words merge into whole-word tokens


def train_teacher(out_dir: str | Path, steps: int = 300, digits: int = 2, seed: int = 0, batch_size: int = 64,
                  lr: float = 3e-3, tag: str = "thought", task: str = "addition", levels: list[int] | None = None,
                  corrupt: float = 0.0, shape: dict[str, int] | None = None) -> Path:
    """Train (or reuse, when ``lab.json`` matches) a teacher and save a Hugging Face model folder.

    ``levels`` mixes difficulties (default: ``[digits]``); ``corrupt`` is the share of training examples with one
    wrong step (the answer follows from it), for a teacher that is imperfect on purpose.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    if tag not in THOUGHT_TAGS:
        raise ValueError(f"--tag: {tag!r} is not one of {', '.join(THOUGHT_TAGS)}")
    if not 0.0 <= corrupt < 1.0:
        raise ValueError(f"--corrupt: {corrupt} is not a share in [0, 1)")
    spec = get_task(task)
    levels = levels or [digits if task == "addition" else spec.default_level]
    shape = {**SHAPE, **(shape or {})}
    recipe: dict[str, Any] = {"task": task, "tag": tag, "digits": levels[0] if len(levels) == 1 else levels,
                              "steps": steps, "seed": seed, "batch_size": batch_size, "lr": lr, "shape": shape}
    if corrupt:
        recipe["corrupt"] = corrupt
    meta = out_dir / "lab.json"
    if meta.exists() and json.loads(meta.read_text()).get("recipe") == recipe:
        return out_dir
    rng = random.Random(seed)
    torch.manual_seed(seed)
    pool = [ex for level in levels for ex in examples(task, 4096 // len(levels), seed, level, tag, corrupt)] \
        if (task != "addition" or corrupt or len(levels) > 1) else _legacy_addition(rng, levels[0], tag)
    tokenizer = build_tokenizer([spec.system_prompt + "\n" + ex.problem + "\n" + ex.solution for ex in pool[:512]],
                                VOCAB[task])
    encoded = [encode_example(tokenizer, conversation(spec.system_prompt, ex.problem, ex.solution)) for ex in pool]
    config = Qwen2Config(vocab_size=len(tokenizer), tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None, **shape)
    model = Qwen2ForCausalLM(config)
    losses = train_from_scratch(model, tokenizer, encoded, steps, batch_size, lr, rng)
    save_model(model, tokenizer, out_dir)
    meta.write_text(json.dumps({"recipe": recipe, "final_loss": sum(losses[-20:]) / min(20, len(losses)),
                                "parameters": sum(p.numel() for p in model.parameters())}) + "\n")
    return out_dir


def _legacy_addition(rng: random.Random, digits: int, tag: str) -> list[Any]:
    """The pool the first lab teachers were trained on (kept so their recipe still means the same model)."""
    from lab.tasks import addition

    return [addition(rng, digits, tag) for _ in range(4096)]


def train_from_scratch(model: Any, tokenizer: Any, encoded: list[tuple[list[int], list[int]]], steps: int,
                       batch_size: int, lr: float, rng: random.Random) -> list[float]:
    """AdamW with a one-cycle schedule on random batches of (ids, labels); returns the per-step losses."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    losses = []
    for _ in range(steps):
        batch = [encoded[rng.randrange(len(encoded))] for _ in range(batch_size)]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([i + [tokenizer.pad_token_id] * (width - len(i)) for i, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


def save_model(model: Any, tokenizer: Any, out_dir: Path) -> None:
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


STUDENT_SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 1,
                 "num_key_value_heads": 1}  # head_dim 64: vLLM's CPU build serves it too


def build_student(teacher_dir: str | Path, out_dir: str | Path, seed: int = 0,
                  shape: dict[str, int] | None = None) -> Path:
    """A randomly initialised student of a smaller shape with the teacher's tokenizer and chat template (KD needs
    one vocabulary); the same seed gives the same weights, so SFT and KD students start from one init."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    teacher_dir, out_dir = Path(teacher_dir), Path(out_dir)
    shape = {**STUDENT_SHAPE, **(shape or {})}
    recipe = {"teacher": str(teacher_dir.resolve()), "seed": seed, "shape": shape,
              "teacher_recipe": json.loads((teacher_dir / "lab.json").read_text())["recipe"]
              if (teacher_dir / "lab.json").exists() else None}
    meta = out_dir / "lab.json"
    if meta.exists() and json.loads(meta.read_text()).get("student") == recipe:
        return out_dir
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    teacher = AutoConfig.from_pretrained(teacher_dir)
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=teacher.vocab_size, tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
                         max_position_embeddings=teacher.max_position_embeddings, **shape)
    model = Qwen2ForCausalLM(config).eval()
    save_model(model, tokenizer, out_dir)
    meta.write_text(json.dumps({"student": recipe, "parameters": sum(p.numel() for p in model.parameters())}) + "\n")
    return out_dir
