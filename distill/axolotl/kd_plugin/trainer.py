"""Axolotl's KD trainer with the top-k + tail loss in place of its Liger top-k kernel.

``AxolotlKDTrainer.compute_loss`` is kept as it is (hidden states of the last layer, the LM head, the KD batch,
division by the batch's label count); only the loss callable it calls is replaced. Weights keep Axolotl's
meaning: ``kd_alpha`` on the summed divergence, ``kd_ce_alpha`` on the summed cross-entropy. Each training step
also logs the two terms of the loss apart, ``kd_term`` and ``ce_term`` (each weighted and divided like the loss):
with ``kd_ce_alpha: 0`` the cross-entropy is not computed and ``ce_term`` is 0."""

from __future__ import annotations

from typing import Any

import torch
from axolotl.integrations.kd.trainer import AxolotlKDTrainer

from distill.axolotl.kd_plugin.loss import fused_topk_tail_loss


class TopKTailLoss:
    """Same call as Axolotl's ``LigerFusedLinearKLTopKLogprobLoss``; returns kd_alpha * KD + kd_ce_alpha * CE and
    keeps the two weighted sums of the last call in ``terms``."""

    def __init__(self, kd_weight: float, ce_weight: float, divergence: str, beta: float | None) -> None:
        self.kd_weight, self.ce_weight = float(kd_weight), float(ce_weight)
        self.divergence, self.beta = divergence, 0.5 if beta is None else float(beta)
        self.terms: tuple[float, float] | None = None

    def __call__(self, lm_head_weight: torch.Tensor, hidden_states: torch.Tensor, target_token_ids: torch.Tensor,
                 target_logprobs: torch.Tensor, target_mask: torch.Tensor, true_labels: torch.Tensor,
                 student_bias: torch.Tensor | None = None) -> torch.Tensor:
        total, kd_sum, ce_sum = fused_topk_tail_loss(lm_head_weight, hidden_states, target_token_ids, target_logprobs,
                                                     target_mask, true_labels, self.kd_weight, self.ce_weight,
                                                     self.divergence, self.beta, student_bias)  # type: ignore[arg-type]
        self.terms = (self.kd_weight * kd_sum.item(), self.ce_weight * ce_sum.item())
        return total


class TopKTailKDTrainer(AxolotlKDTrainer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._kd_loss_fn = TopKTailLoss(self.args.kd_alpha, self.args.kd_ce_alpha or 0.0,
                                        self.args.kd_divergence or "forward", self.args.kd_jsd_beta)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        terms, self._kd_loss_fn.terms = self._kd_loss_fn.terms, None
        if terms is not None and model.training:
            count = num_items_in_batch if num_items_in_batch is not None else (inputs["labels"] != -100).sum()
            count = float(count) if float(count) > 0 else 1.0  # the loss itself is left undivided then
            self.store_metrics({"kd_term": terms[0] / count, "ce_term": terms[1] / count})
        return result
