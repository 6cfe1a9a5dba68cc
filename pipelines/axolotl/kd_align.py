"""Align the teacher's top-k logprobs to the student's tokens of the assistant turn, as Axolotl's KD reads them.

Where the targets go (Axolotl 0.19, dataset ``type: axolotl.integrations.kd.chat_template``): the per-position
lists are right-aligned to the end of the tokenised conversation (entry -1 sits on the last token), and the KD
loss pairs the student's hidden state at position p with target p while the hard labels are shifted by one.
So target p must be the teacher's distribution over token p+1: the list starts one position before the first
assistant token and ends on the last token. Axolotl masks target p when label p is -100, so the distribution
of the first assistant token (predicted from the prompt's last token) is never trained; every later content
token and the end-of-turn token are.

The teacher sampled token ids ``t`` for its raw completion; the student tokenises the normalised assistant
turn (``<thought>…</thought>\\n\\nanswer``) into ``s``. With a shared tokenizer and a teacher that already
wrote that format, ``t == s`` and the mapping is exact. Otherwise (``<think>`` tags, a separate reasoning
field, stripped whitespace) the two id sequences are matched with difflib: a student token inside a matching
block takes the teacher's distribution at the matched position, any other one gets a one-hot target on
itself (pure cross-entropy), and the row's ``coverage`` says how much of it the teacher really supervises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any

TOKEN_ID_PREFIX = "token_id:"
# A "never" logprob that stays finite: JSON has no -inf, and exp(-100) is a clean zero after renormalising.
FILLER_LOGPROB = -100.0

Entry = dict[str, Any]  # {"token": "token_id:<id>", "logprob": float}


class KDFormatError(ValueError):
    """A row whose teacher logprobs cannot be used (not token ids, ragged, outside the student's vocabulary)."""


@dataclass(frozen=True)
class StudentTurn:
    """The conversation as the student's chat template tokenises it, and where the assistant content sits."""

    input_ids: list[int]
    content_start: int
    content_end: int  # input_ids[content_end:] is the template's end-of-turn suffix (e.g. <|im_end|> \n)


@dataclass(frozen=True)
class KDTargets:
    logprobs: list[list[Entry]]  # one top-k list per position from content_start - 1 to the last token
    coverage: float  # fraction of trained tokens (content + end of turn) that carry a teacher distribution
    exact: bool  # the teacher's ids were the student's ids, token for token


def encode_chat(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> list[int]:
    """Token ids exactly as Axolotl's chat_template strategy builds them (apply_chat_template, tokenize=True)."""
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False,
                                        add_generation_prompt=add_generation_prompt)
    return list(ids)


def student_turn(tokenizer: Any, messages: list[dict[str, str]]) -> StudentTurn | None:
    """Locate the last (assistant) turn's content; None when the template does not render the prompt as a prefix."""
    full = encode_chat(tokenizer, messages)
    prefix = encode_chat(tokenizer, messages[:-1], add_generation_prompt=True)
    empty = encode_chat(tokenizer, [*messages[:-1], {"role": "assistant", "content": ""}])
    if full[:len(prefix)] != prefix or empty[:len(prefix)] != prefix:
        return None
    suffix = empty[len(prefix):]
    end = len(full) - len(suffix) if suffix and full[len(full) - len(suffix):] == suffix else len(full)
    return StudentTurn(full, len(prefix), end)


def parse_token_id(token: str) -> int:
    """``token_id:123`` → 123 (vLLM's ``return_tokens_as_token_ids``)."""
    if not isinstance(token, str) or not token.startswith(TOKEN_ID_PREFIX):
        raise KDFormatError(f"token {token!r} is not 'token_id:<id>'; generate with vLLM's return_tokens_as_token_ids")
    try:
        return int(token[len(TOKEN_ID_PREFIX):])
    except ValueError:
        raise KDFormatError(f"token {token!r} is not 'token_id:<id>'") from None


def align_tokens(teacher: Sequence[int], student: Sequence[int]) -> list[int | None]:
    """For each student token, the index of the same token in the teacher's sequence (None if unmatched)."""
    if list(teacher) == list(student):
        return list(range(len(student)))
    mapping: list[int | None] = [None] * len(student)
    # autojunk off: in long traces frequent tokens (spaces, newlines) would otherwise never match
    for block in SequenceMatcher(None, list(teacher), list(student), autojunk=False).get_matching_blocks():
        for offset in range(block.size):
            mapping[block.b + offset] = block.a + offset
    return mapping


def one_hot(token_id: int, k: int) -> list[Entry]:
    """A target that puts all mass on ``token_id`` (k entries, the others at FILLER_LOGPROB)."""
    others = [i for i in range(k + 1) if i != token_id][:k - 1]
    return [{"token": f"{TOKEN_ID_PREFIX}{token_id}", "logprob": 0.0}] + [
        {"token": f"{TOKEN_ID_PREFIX}{i}", "logprob": FILLER_LOGPROB} for i in others]


def top_k_entries(entries: Sequence[dict[str, Any]], k: int, vocab_size: int) -> list[Entry]:
    """The teacher's list cut or padded to exactly k entries, ids checked against the student's vocabulary."""
    out: list[Entry] = []
    for entry in list(entries)[:k]:
        token_id = parse_token_id(entry["token"])
        if not 0 <= token_id < vocab_size:
            raise KDFormatError(f"teacher token id {token_id} is outside the student's vocabulary ({vocab_size})")
        out.append({"token": f"{TOKEN_ID_PREFIX}{token_id}", "logprob": float(entry["logprob"])})
    if not out:
        raise KDFormatError("empty top-k list")
    used = {e["token"] for e in out}
    filler = (f"{TOKEN_ID_PREFIX}{i}" for i in range(vocab_size) if f"{TOKEN_ID_PREFIX}{i}" not in used)
    out += [{"token": next(filler), "logprob": FILLER_LOGPROB} for _ in range(k - len(out))]
    return out


def build_kd_targets(turn: StudentTurn, tokens: Sequence[str], topk: Sequence[Sequence[dict[str, Any]] | None],
                     k: int, vocab_size: int) -> KDTargets:
    """The right-aligned KD target list for one conversation (see the module docstring for the layout)."""
    if len(tokens) != len(topk):
        raise KDFormatError(f"{len(tokens)} sampled tokens but {len(topk)} top-k lists")
    teacher_ids = [parse_token_id(t) for t in tokens]
    dists = list(topk)
    ids = turn.input_ids
    eot_id = ids[turn.content_end] if turn.content_end < len(ids) else None
    eot_dist = None
    if eot_id is not None and teacher_ids and teacher_ids[-1] == eot_id:  # vLLM reports the sampled EOS too
        eot_dist, teacher_ids, dists = dists[-1], teacher_ids[:-1], dists[:-1]
    content = ids[turn.content_start:turn.content_end]
    mapping = align_tokens(teacher_ids, content)
    covered = 0
    targets: list[list[Entry]] = []
    for position in range(turn.content_start - 1, len(ids)):
        nxt = position + 1
        dist = None
        if nxt >= len(ids):  # after the last token: Axolotl masks it (label of the template's last token)
            targets.append(one_hot(eot_id if eot_id is not None else ids[-1], k))
            continue
        if nxt < turn.content_end:
            index = mapping[nxt - turn.content_start]
            dist = dists[index] if index is not None else None
        elif nxt == turn.content_end:
            dist = eot_dist
        if dist:
            targets.append(top_k_entries(dist, k, vocab_size))
            covered += nxt <= turn.content_end
        else:
            targets.append(one_hot(ids[nxt], k))
    trained = len(content) + (eot_id is not None)
    exact = teacher_ids == content and (eot_id is None or eot_dist is not None)
    return KDTargets(targets, covered / trained if trained else 0.0, exact)


def axolotl_columns(targets: KDTargets) -> dict[str, list[list[Any]]]:
    """The two columns ``axolotl.integrations.kd.chat_template`` reads (Axolotl 0.19's loader, ``load``):
    ``logprobs`` (per position k floats) and ``target_token_ids`` (per position the k ids). The
    ``{"token": "token_id:<id>", "logprob"}`` lists are what the older ``load_legacy`` read; 0.19 cannot reach
    that loader from a config's ``type``, so the export splits them."""
    return {"logprobs": [[entry["logprob"] for entry in position] for position in targets.logprobs],
            "target_token_ids": [[parse_token_id(entry["token"]) for entry in position]
                                 for position in targets.logprobs]}
