"""Dataset type ``distill.axolotl.kd_plugin.chat_template``: Axolotl's KD chat template (same rows, same
alignment, same masks) keeping the teacher's raw top-k log-probabilities.

Axolotl 0.19's ``axolotl.integrations.kd.chat_template`` renormalises each position's k probabilities to sum to 1
before they reach the trainer, so the teacher's tail (1 - sum) is gone; the top-k + tail loss needs it. As in
Axolotl, the lists are right-aligned to the tokenised conversation (target p is over token p + 1) and target p is
masked by label p; positions before the lists get id 0..k-1, -inf and mask 0. Runs inside ``axolotl preprocess``.
"""

from __future__ import annotations

import math
from typing import Any

from axolotl.integrations.kd.chat_template import ChatTemplateStrategyWithKDv2, KDStrategyLoaderV2

from distill.axolotl.kd_plugin.rules import DATASET_TYPE

MASS_TOLERANCE = 1e-3  # raw top-k probabilities summing above 1 + this are not log-probabilities


class RawTopKChatTemplateStrategy(ChatTemplateStrategyWithKDv2):
    """Target fields from the export's ``logprobs`` and ``target_token_ids``, log-probabilities left raw."""

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
            target_mask.append([0 if sample["labels"][position] == -100 else 1] * k)
        sample["target_logprobs"] = target_logprobs
        sample["target_token_ids"] = target_ids
        sample["target_mask"] = target_mask
        return sample


class RawTopKStrategyLoader(KDStrategyLoaderV2):
    def _get_strategy_cls(self, cfg: Any) -> type:
        return RawTopKChatTemplateStrategy

    def _get_strategy_params(self, cfg: Any, ds_cfg: dict[str, Any]) -> dict[str, Any]:
        params = super()._get_strategy_params(cfg, ds_cfg)
        for name, value in (("temperature", ds_cfg.get("temperature")), ("kd_temperature", cfg.get("kd_temperature"))):
            if value not in (None, 1, 1.0):
                raise ValueError(f"{name}: {value}: {DATASET_TYPE} keeps raw (T = 1) log-probabilities; set 1.0")
        return params


load = RawTopKStrategyLoader()
