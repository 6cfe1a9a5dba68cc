"""Axolotl's KD trainer with the top-k + tail loss in place of its Liger top-k kernel.

``AxolotlKDTrainer.compute_loss`` is kept as it is (hidden states of the last layer, the LM head, the KD batch,
division by the batch's label count); only the loss callable it calls is replaced. Weights keep Axolotl's
meaning: ``kd_alpha`` on the summed divergence, ``kd_ce_alpha`` on the summed cross-entropy."""

from __future__ import annotations

from typing import Any

import torch
from axolotl.integrations.kd.trainer import AxolotlKDTrainer

from distill.axolotl.kd_plugin.loss import fused_topk_tail_loss


class TopKTailLoss:
    """Same call as Axolotl's ``LigerFusedLinearKLTopKLogprobLoss``; returns kd_alpha * KD + kd_ce_alpha * CE."""

    def __init__(self, kd_weight: float, ce_weight: float, divergence: str, beta: float | None) -> None:
        self.kd_weight, self.ce_weight = float(kd_weight), float(ce_weight)
        self.divergence, self.beta = divergence, 0.5 if beta is None else float(beta)

    def __call__(self, lm_head_weight: torch.Tensor, hidden_states: torch.Tensor, target_token_ids: torch.Tensor,
                 target_logprobs: torch.Tensor, target_mask: torch.Tensor, true_labels: torch.Tensor,
                 student_bias: torch.Tensor | None = None) -> torch.Tensor:
        total, _, _ = fused_topk_tail_loss(lm_head_weight, hidden_states, target_token_ids, target_logprobs,
                                            target_mask, true_labels, self.kd_weight, self.ce_weight,
                                            self.divergence, self.beta, student_bias)  # type: ignore[arg-type]
        return total


class TopKTailKDTrainer(AxolotlKDTrainer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._kd_loss_fn = TopKTailLoss(self.args.kd_alpha, self.args.kd_ce_alpha or 0.0,
                                        self.args.kd_divergence or "forward", self.args.kd_jsd_beta)
