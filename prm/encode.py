"""Model inputs for each PRM style, and where in the tokens each step's reward is read.

- ``math-shepherd``: ``"{problem} {step_1} ки\\n{step_2} ки\\n…"``; the reward of step i comes from the
  LM logits at the i-th tag: ``P('+') / (P('+') + P('-'))``.
- ``qwen-prm`` (Qwen2.5-Math-PRM): a chat (system, user = problem, assistant = steps each followed by
  ``<extra_0>``); the reward is ``softmax(head logits)[1]`` at each separator.
- ``stepwise`` (a token classifier trained by Axolotl's ``stepwise_supervised`` strategy, ``distill config prm``):
  the ids are built exactly as Axolotl 0.19 built them (``encode_stepwise``), piece by piece, not from one text;
  the reward is ``softmax(head logits)[1]`` at the last token of each step + separator, where the label was.

Tag positions come from the tokenizer's character offsets, not from searching for the tag's token id:
a tag that BPE splits into several tokens is read at its last token (as Math-Shepherd's
``tokenizer.encode(" ки")[-1]``), and a tag string that happens to occur inside a step is not taken for one.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any

from prm.config import PrmConfig, SpecError


@dataclass(frozen=True)
class EncodedTrace:
    """One trace ready for the model: its text, token ids and the token index scoring each step."""

    text: str
    input_ids: list[int]
    positions: list[int]


def load_tokenizer(cfg: PrmConfig) -> Any:
    from transformers import AutoTokenizer

    name = cfg.tokenizer or cfg.model
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        field = "prm.tokenizer" if cfg.tokenizer else "prm.model"
        raise SpecError(f"{field}: cannot load {name!r} ({type(exc).__name__}); give a local path "
                        "or a Hub id available offline") from None
    if not getattr(tokenizer, "is_fast", False):
        raise SpecError(f"prm.tokenizer: {name!r} has no fast tokenizer (tokenizer.json); the PRM needs "
                        "character offsets to find the step tags")
    return tokenizer


def token_ids(tokenizer: Any, token: str) -> int:
    """The id of a reward token (``+``/``-``); a token BPE splits is represented by its last piece."""
    ids = tokenizer.encode(token, add_special_tokens=False)
    if not ids:
        raise SpecError(f"prm.good_token/bad_token: {token!r} encodes to no token")
    return ids[-1]


def build_text(style: str, problem: str, steps: list[str], tag: str, system: str,
               tokenizer: Any) -> tuple[str, list[int]]:
    """The model input and, per step, the character offset just after its tag."""
    steps = [s.strip() for s in steps]
    if style == "math-shepherd":
        text, ends = f"{problem.strip()} ", []
        for step in steps:
            text += step + tag
            ends.append(len(text))
            text += "\n"
        return text, ends
    if style == "qwen-prm":
        assistant = "".join(step + tag for step in steps)
        messages = [{"role": "system", "content": system}, {"role": "user", "content": problem.strip()},
                    {"role": "assistant", "content": assistant}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        start = text.rfind(assistant)
        if start < 0:
            raise SpecError("prm.tokenizer: its chat template changes the assistant text; use a ChatML tokenizer")
        ends, offset = [], start
        for step in steps:
            offset += len(step) + len(tag)
            ends.append(offset)
        return text, ends
    raise SpecError(f"prm.style: unknown style {style!r}; use math-shepherd, qwen-prm or stepwise")


def tag_positions(offsets: list[tuple[int, int]], ends: list[int]) -> list[int]:
    """For each tag end (a character offset), the index of the last token starting before it."""
    real = [i for i, (start, stop) in enumerate(offsets) if stop > start]  # skip added special tokens (0, 0)
    starts = [offsets[i][0] for i in real]
    positions = []
    for end in ends:
        k = bisect.bisect_left(starts, end) - 1
        if k < 0:
            raise ValueError(f"no token before character {end}")
        positions.append(real[k])
    return positions


def encode_stepwise(tokenizer: Any, problem: str, steps: list[str], separator: str) -> EncodedTrace:
    """Axolotl 0.19's ``StepwiseSupervisedPromptTokenizingStrategy`` (as TRL's PRMTrainer): the prompt and each
    step are tokenised on their own without special tokens, each step is followed by the separator's ids, a BOS
    (if the tokenizer has one) goes first, and step i's label sits on the last token of step i + separator.
    Nothing separates the prompt from the first step. The steps are stripped, as ``distill prm-label`` wrote them.
    """
    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    separator_ids = ids(separator)
    if not separator_ids:
        raise SpecError(f"prm.step_tag: the separator {separator!r} encodes to no token; use the training "
                        "config's step_separator (default \\n)")
    input_ids = ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + ids(problem)
    text, positions = problem, []
    for step in (s.strip() for s in steps):
        input_ids += ids(step) + separator_ids
        positions.append(len(input_ids) - 1)
        text += step + separator
    return EncodedTrace(text, input_ids, positions)


def encode_trace(tokenizer: Any, cfg: PrmConfig, problem: str, steps: list[str]) -> EncodedTrace:
    if cfg.style == "stepwise":
        return encode_stepwise(tokenizer, problem, steps, cfg.tag)
    text, ends = build_text(cfg.style, problem, steps, cfg.tag, cfg.system, tokenizer)
    encoded = tokenizer(text, return_offsets_mapping=True, add_special_tokens=cfg.style == "math-shepherd")
    return EncodedTrace(text, list(encoded["input_ids"]), tag_positions(encoded["offset_mapping"], ends))


def length_batches(lengths: list[int], batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Indices grouped by similar length (longest first) so padding stays small; each batch holds at
    most ``batch_size`` traces and ``max_batch_tokens`` padded tokens (a longer trace goes alone)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        current = batches[-1] if batches else None
        if current and len(current) < batch_size and lengths[current[0]] * (len(current) + 1) <= max_batch_tokens:
            current.append(i)
        else:
            batches.append([i])
    return batches


def pair_reward(negative: float, positive: float, probs: bool) -> float:
    """P(positive) from a (negative, positive) pair of probabilities or of logits."""
    if probs:
        total = negative + positive
        return positive / total if total > 0 else 0.0
    return 1.0 / (1.0 + math.exp(negative - positive))
