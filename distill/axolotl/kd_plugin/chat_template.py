"""Dataset type ``distill.axolotl.kd_plugin.chat_template``: Axolotl's KD chat template (same rows, same
alignment, same masks) keeping the teacher's raw top-k log-probabilities.

Axolotl 0.19's ``axolotl.integrations.kd.chat_template`` renormalises each position's k probabilities to sum to 1
before they reach the trainer, so the teacher's tail (1 - sum) is gone; the top-k + tail loss needs it. As in
Axolotl, the lists are right-aligned to the tokenised conversation (target p is over token p + 1, and the loss
compares it with the student's logits at p). Unlike Axolotl, target p is masked by label p + 1 (is the token it
predicts trained?): Axolotl masks it by label p, so the target of the answer's first token is never trained and the
position after the last label (the end-of-turn token, whose next token the teacher was never trained on) is. A
student trained by KD alone then never learns to open its answer (measured in the lab: it starts mid-thought, 47 %
format; docs/lab.md). Positions before the lists get id 0..k-1, -inf and mask 0. Runs inside ``axolotl preprocess``.

With ``kd_divergence: reverse_sampled`` each position gets one more entry: the token that follows (the student's
sampled token on on-policy rows) with the teacher's log-probability of it (the export's ``target_token_logprob``),
marked by target_mask 2 (``SAMPLED_TOKEN_MASK``) so that the top-k + tail divergences never count it. Riding in the
target lists, it goes through Axolotl's collators (padding, packing) unchanged.
"""

from __future__ import annotations

import math
from typing import Any

from axolotl.integrations.kd.chat_template import ChatTemplateStrategyWithKDv2, KDStrategyLoaderV2

from distill.axolotl.kd_plugin.rules import DATASET_TYPE, SAMPLED, SAMPLED_TOKEN_MASK, TOKEN_LOGPROB_FIELD

MASS_TOLERANCE = 1e-3  # raw top-k probabilities summing above 1 + this are not log-probabilities


class RawTopKChatTemplateStrategy(ChatTemplateStrategyWithKDv2):
    """Target fields from the export's ``logprobs`` and ``target_token_ids``, log-probabilities left raw; with
    ``sampled_token`` also the following token's entry from ``target_token_logprob``."""

    def __init__(self, *args: Any, sampled_token: bool = False, **kwargs: Any) -> None:
        self.sampled_token = sampled_token
        super().__init__(*args, **kwargs)

    def _prepare_kd_fields(self, tokenized_prompt: dict[str, Any], original_prompt: dict[str, Any]) -> dict[str, Any]:
        tokenized_prompt = super()._prepare_kd_fields(tokenized_prompt, original_prompt)
        token_logprob = original_prompt.pop(TOKEN_LOGPROB_FIELD, None)
        if self.sampled_token:
            if token_logprob is None:
                raise ValueError(f"kd_divergence: {SAMPLED} needs the export's {TOKEN_LOGPROB_FIELD} (the teacher's "
                                 "log-probability of each sampled token); export with a teacher scoring pass "
                                 "(distill export --format kd --teacher-url/--teacher-model)")
            tokenized_prompt[TOKEN_LOGPROB_FIELD] = token_logprob
        return tokenized_prompt

    def transform_logprobs(self, sample: dict[str, Any]) -> dict[str, Any]:
        logprobs = sample.pop(self.logprobs_field)
        token_ids = sample.pop("target_token_ids")
        length = len(sample["input_ids"])
        if len(logprobs) != len(token_ids) or len(logprobs) > length:
            raise ValueError(f"{DATASET_TYPE}: {len(logprobs)} log-probability lists and {len(token_ids)} id lists "
                             f"for {length} tokens; re-export with `distill export --format kd`")
        k = min((len(row) for row in logprobs if row), default=0)
        if k == 0:
            raise ValueError(f"{DATASET_TYPE}: a row has no top-k log-probabilities")
        pad = length - len(logprobs)
        target_logprobs = [[-math.inf] * k for _ in range(pad)]
        target_ids = [list(range(k)) for _ in range(pad)]
        target_mask = [[0] * k for _ in range(pad)]
        for position, (row, ids) in enumerate(zip(logprobs, token_ids, strict=True), start=pad):
            if not row or len(row) < k or len(ids) < k:  # nothing stored here: masked
                target_logprobs.append([-math.inf] * k)
                target_ids.append(list(range(k)))
                target_mask.append([0] * k)
                continue
            values = [float(v) for v in row[:k]]
            if sum(math.exp(v) for v in values) > 1 + MASS_TOLERANCE:
                raise ValueError(f"{DATASET_TYPE}: position {position}'s top-k probabilities sum to more than 1: "
                                 "not raw log-probabilities")
            target_logprobs.append(values)
            target_ids.append([int(i) for i in ids[:k]])
            # target p is over token p + 1, so it is trained when token p + 1 is: Axolotl's own type masks it by
            # label p, which drops the first answer token's target and trains the one after the last label
            trained = position + 1 < length and sample["labels"][position + 1] != -100
            target_mask.append([1 if trained else 0] * k)
        if self.sampled_token:
            self._add_sampled_token(sample, pad, target_logprobs, target_ids, target_mask)
        sample["target_logprobs"] = target_logprobs
        sample["target_token_ids"] = target_ids
        sample["target_mask"] = target_mask
        return sample

    @staticmethod
    def _add_sampled_token(sample: dict[str, Any], pad: int, target_logprobs: list[list[float]],
                           target_ids: list[list[int]], target_mask: list[list[int]]) -> None:
        """Append to each position p the token p + 1 and the teacher's log-probability of it (mask 2 where the
        position is trained; nothing to append after the last token or before the lists)."""
        values = sample.pop(TOKEN_LOGPROB_FIELD)
        input_ids = sample["input_ids"]
        if len(values) != len(input_ids) - pad:
            raise ValueError(f"{DATASET_TYPE}: {len(values)} {TOKEN_LOGPROB_FIELD} values for "
                             f"{len(input_ids) - pad} target positions; re-export with `distill export --format kd`")
        for position in range(len(input_ids)):
            value = values[position - pad] if position >= pad else None
            trained = (value is not None and position + 1 < len(input_ids) and math.isfinite(float(value))
                       and target_mask[position][0] == 1)
            target_ids[position].append(int(input_ids[position + 1]) if trained else 0)
            target_logprobs[position].append(float(value) if trained else -math.inf)
            target_mask[position].append(SAMPLED_TOKEN_MASK if trained else 0)


class RawTopKStrategyLoader(KDStrategyLoaderV2):
    def _get_strategy_cls(self, cfg: Any) -> type:
        return RawTopKChatTemplateStrategy

    def _get_strategy_params(self, cfg: Any, ds_cfg: dict[str, Any]) -> dict[str, Any]:
        params = {**super()._get_strategy_params(cfg, ds_cfg), "sampled_token": cfg.get("kd_divergence") == SAMPLED}
        for name, value in (("temperature", ds_cfg.get("temperature")), ("kd_temperature", cfg.get("kd_temperature"))):
            if value not in (None, 1, 1.0):
                raise ValueError(f"{name}: {value}: {DATASET_TYPE} keeps raw (T = 1) log-probabilities; set 1.0")
        return params


load = RawTopKStrategyLoader()
