"""Align the teacher's top-k logprobs to the student's tokens of the assistant turn, as Axolotl's KD reads them.

Where the targets go (Axolotl 0.19, dataset ``type: axolotl.integrations.kd.chat_template``, and the factory's
``distill.axolotl.kd_plugin.chat_template``, which aligns the same way): the per-position
lists are right-aligned to the end of the tokenised conversation (entry -1 sits on the last token), and the KD
loss pairs the student's hidden state at position p with target p while the hard labels are shifted by one.
So target p must be the teacher's distribution over token p+1: the list starts one position before the first
assistant token and ends on the last token. Axolotl masks target p when label p is -100, so the distribution
of the first assistant token (predicted from the prompt's last token) is never trained; every later content
token and the end-of-turn token are.

Targets are right by construction: target p is the teacher's top-k distribution after exactly the student's
tokens ``ids[:p+1]``. Two ways to get them:

* ``scored`` (``targets_from_scores``): a teacher scoring pass over the student's final ids (see
  ``distill/kd/score.py``); every position, the template's trailing tokens included, is the teacher's. It also
  keeps, per position, the teacher's log-probability of the token that follows (``target_token_logprob``): on the
  student's own samples, the signal of the sampled-token reverse-KL estimate (the plugin's ``reverse_sampled``).
* ``generation`` (``targets_from_generation``): the run's own top-k lists, only when the teacher's prompt ids
  and sampled ids are provably the student's sequence (same prompt tokens, content tokens and end-of-turn
  token). The tokens the template adds after the end of turn were never scored by the teacher: they get a
  one-hot target on the template's own token (Axolotl trains one of them, the one after the end of turn).

A row that is neither (normalised ``<think>`` tags, a separate reasoning field, re-tokenised text) is never
re-aligned by guessing: without a scorer it is dropped as ``not_provable``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distill.kd.score import Scored

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
    source: str  # "scored" | "generation"
    # per position, the teacher's log-probability of the token that follows (ids[p + 1]); scored targets only
    token_logprobs: list[float] | None = None


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


def one_hot(token_id: int, k: int) -> list[Entry]:
    """A target that puts all mass on ``token_id`` (k entries, the others at FILLER_LOGPROB)."""
    others = [i for i in range(k + 1) if i != token_id][:k - 1]
    return [{"token": f"{TOKEN_ID_PREFIX}{token_id}", "logprob": 0.0}] + [
        {"token": f"{TOKEN_ID_PREFIX}{i}", "logprob": FILLER_LOGPROB} for i in others]


def top_k_entries(entries: Sequence[dict[str, Any]], k: int, vocab_size: int) -> list[Entry]:
    """The teacher's list cut or padded to exactly k entries, ids checked against the student's vocabulary."""
    out: list[Entry] = []
    for entry in sorted(entries, key=lambda e: float(e["logprob"]), reverse=True)[:k]:
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


def targets_from_scores(turn: StudentTurn, scores: Sequence[Scored | None], k: int, vocab_size: int) -> KDTargets:
    """Targets from a scoring pass over ``turn.input_ids`` (``scores[i]``: the top k before token i and the
    teacher's log-probability of token i)."""
    ids = turn.input_ids
    if len(scores) != len(ids):
        raise KDFormatError(f"{len(scores)} scored positions for {len(ids)} tokens")
    targets, token_logprobs = [], []
    for position in range(turn.content_start - 1, len(ids)):
        nxt = position + 1
        if nxt >= len(ids):  # after the last token: masked by Axolotl (the template's last label is -100)
            targets.append(one_hot(ids[-1], k))
            token_logprobs.append(0.0)
            continue
        scored = scores[nxt]
        if not scored or not scored.top:
            raise KDFormatError(f"no teacher distribution at position {nxt}")
        targets.append(top_k_entries([{"token": f"{TOKEN_ID_PREFIX}{t}", "logprob": v} for t, v in scored.top], k,
                                     vocab_size))
        token_logprobs.append(float(scored.token_logprob))
    return KDTargets(targets, "scored", token_logprobs)


def targets_from_generation(turn: StudentTurn, prompt_ids: Sequence[int] | None, tokens: Sequence[str],
                            topk: Sequence[Sequence[dict[str, Any]]], k: int, vocab_size: int) -> KDTargets | None:
    """Targets from the run's own top-k lists, or None unless its context and tokens are the student's."""
    if len(tokens) != len(topk):
        raise KDFormatError(f"{len(tokens)} sampled tokens but {len(topk)} top-k lists")
    ids = turn.input_ids
    if prompt_ids is None or list(prompt_ids) != ids[:turn.content_start]:
        return None
    # the sampled ids are the assistant content and then the end-of-turn token (finish_reason "stop")
    if [parse_token_id(t) for t in tokens] != ids[turn.content_start:turn.content_end + 1]:
        return None
    targets = [top_k_entries(dist, k, vocab_size) for dist in topk]
    for position in range(turn.content_end, len(ids)):  # the template's tokens after the end of turn
        targets.append(one_hot(ids[position + 1] if position + 1 < len(ids) else ids[-1], k))
    return KDTargets(targets, "generation")


def axolotl_columns(targets: KDTargets) -> dict[str, list[Any]]:
    """The two columns ``axolotl.integrations.kd.chat_template`` reads (Axolotl 0.19's loader, ``load``):
    ``logprobs`` (per position k floats) and ``target_token_ids`` (per position the k ids). The
    ``{"token": "token_id:<id>", "logprob"}`` lists are what the older ``load_legacy`` read; 0.19 cannot reach
    that loader from a config's ``type``, so the export splits them. Scored targets add
    ``target_token_logprob`` (per position one float: the teacher's log-probability of the token that follows),
    which the factory's dataset type reads for ``kd_divergence: reverse_sampled``."""
    columns = {"logprobs": [[entry["logprob"] for entry in position] for position in targets.logprobs],
               "target_token_ids": [[parse_token_id(entry["token"]) for entry in position]
                                    for position in targets.logprobs]}
    if targets.token_logprobs is not None:  # one float per position, aligned with the lists above
        columns["target_token_logprob"] = list(targets.token_logprobs)
    return columns
