"""Top-k + tail divergences between a teacher given by its top-k log-probabilities and a full student softmax.

The teacher is known on k token ids per position; everything else is one outcome, the tail (1 - sum of the k).
The student is coarse-grained the same way: its full-softmax probability of each of the k ids plus its own tail
(the mass on every other id, taken from the logits directly, so it has no cancellation). Over these k + 1
outcomes forward KL, reverse KL and the generalized JSD(beta) of GKD are true divergences: >= 0, 0 only when the
student matches the teacher on the k ids and on the tail mass, and exact when the k ids cover the vocabulary.
Axolotl 0.19's top-k loss instead drops the tail (reverse KL and JSD are then no divergences) or renormalises the
student over the k ids (no gradient to the other ids).

``reverse_sampled`` is the other way to get KL(student || teacher) on the student's own samples (the on-policy
recipe of Thinking Machines, GKD with beta = 1): per position only the sampled token x, whose teacher
log-probability the scoring pass kept, with the per-token advantage log p(x) - log q(x) as in a policy gradient.
Its value is log q(x) - log p(x) and its gradient (log q(x) - log p(x)) grad log q(x): over x ~ q both have the
full-vocabulary reverse KL's value and gradient as expectation (no top-k coarse-graining; one sample's variance).
Pure torch: the Axolotl trainer (trainer.py) calls ``fused_topk_tail_loss``; the tests call the same functions
in the product's venv.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from distill.axolotl.kd_plugin.rules import DIVERGENCES, SAMPLED, SAMPLED_TOKEN_MASK

Divergence = Literal["forward", "reverse", "jsd", "reverse_sampled"]
# The teacher's tail is floored at this probability (when the k ids do not cover the vocabulary): raw top-k
# log-probabilities rounded in float32 can sum to >= 1, and reverse KL is infinite against a zero tail.
TAIL_FLOOR = 1e-6
IGNORE_INDEX = -100


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate on both ends (Maechler's split at -log 2)."""
    x = x.clamp(max=0.0)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def topk_tail_logprobs(student_logits: torch.Tensor, token_ids: torch.Tensor, teacher_logprobs: torch.Tensor,
                       mask: torch.Tensor, tail_floor: float = TAIL_FLOOR
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per position, the k + 1 outcome log-probabilities of the teacher and of the student.

    ``student_logits`` [N, V]; ``token_ids``, ``teacher_logprobs`` (raw, T = 1) and ``mask`` [N, K]. An entry counts
    when its mask is set and its log-probability is finite (Axolotl pads with -inf or -1e9 under mask 0; its online
    collator pads with -inf under mask 1), and its id is inside the student's vocabulary; ids must be distinct
    within a position. Returns ``(log_p, log_q, present)``, each [N, K + 1] (the tail last): ``present`` says
    which outcomes exist (a dropped entry's mass is in the tail; the tail is absent when the k ids cover the
    vocabulary). Absent outcomes hold 0 in both logs.
    """
    logits = student_logits.float()
    n, vocab = logits.shape
    teacher = teacher_logprobs.float()
    # mask 1: a top-k entry (the sampled token's own entry, mask 2, is not one of the k outcomes)
    valid = (mask == 1) & torch.isfinite(teacher) & (teacher > -1e8) & (token_ids >= 0) & (token_ids < vocab)
    ids = torch.where(valid, token_ids.long(), torch.zeros_like(token_ids, dtype=torch.long))
    in_block = torch.zeros(n, vocab, dtype=torch.bool, device=logits.device)
    rows = torch.arange(n, device=logits.device)[:, None].expand_as(ids)
    in_block[rows[valid], ids[valid]] = True  # only counted entries: a padded id 0 may repeat a real one
    has_tail = in_block.sum(-1) < vocab

    # student: full-softmax log-probabilities of the k ids, and of everything else (masked logsumexp)
    lse = torch.logsumexp(logits, -1, keepdim=True)
    block_q = logits.gather(1, ids) - lse
    rest = logits.masked_fill(in_block, torch.finfo(logits.dtype).min)  # finite: no NaN gradient when empty
    tail_q = torch.logsumexp(rest, -1, keepdim=True) - lse

    # teacher: the k raw log-probabilities and 1 - their sum, floored; renormalised over the present outcomes
    block_p = torch.where(valid, teacher, torch.zeros_like(teacher))
    mass = torch.logsumexp(torch.where(valid, teacher, torch.full_like(teacher, -math.inf)), -1, keepdim=True)
    tail_p = log1mexp(mass.clamp(max=0.0)).clamp(min=math.log(tail_floor))
    present = torch.cat([valid, has_tail[:, None]], -1)
    log_p = torch.cat([block_p, tail_p], -1)
    log_p = log_p - torch.logsumexp(log_p.masked_fill(~present, -math.inf), -1, keepdim=True)
    log_q = torch.cat([block_q, tail_q], -1)
    zero = torch.zeros_like(log_p)
    return torch.where(present, log_p, zero), torch.where(present, log_q, zero), present


def divergence(log_p: torch.Tensor, log_q: torch.Tensor, present: torch.Tensor, kind: Divergence = "forward",
               beta: float = 0.5) -> torch.Tensor:
    """Per position [N]: KL(p || q) (forward), KL(q || p) (reverse) or GKD's generalized JSD(beta) =
    beta KL(p || m) + (1 - beta) KL(q || m) with m = beta p + (1 - beta) q, over the present outcomes."""
    weight = present.float()
    if kind == "forward":
        return (weight * log_p.exp() * (log_p - log_q)).sum(-1)
    if kind == "reverse":
        return (weight * log_q.exp() * (log_q - log_p)).sum(-1)
    if kind == "jsd":
        if not 0.0 < beta < 1.0:
            raise ValueError(f"jsd: beta must be in (0, 1), got {beta}")
        log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log(1.0 - beta))
        teacher_kl = (weight * log_p.exp() * (log_p - log_m)).sum(-1)
        student_kl = (weight * log_q.exp() * (log_q - log_m)).sum(-1)
        return beta * teacher_kl + (1.0 - beta) * student_kl
    raise ValueError(f"divergence: {kind!r} is not one of {', '.join(DIVERGENCES)}")


def sampled_reverse_kl(student_token_logprob: torch.Tensor, teacher_token_logprob: torch.Tensor) -> torch.Tensor:
    """The sampled-token estimate of KL(q || p) per position: value log q(x) - log p(x), gradient
    (log q(x) - log p(x)) * grad log q(x) (REINFORCE with the advantage log p(x) - log q(x), held fixed). With x
    drawn from q, the expectation of both is the reverse KL's value and gradient at that position."""
    ratio = (student_token_logprob - teacher_token_logprob).detach()
    return ratio + ratio * (student_token_logprob - student_token_logprob.detach())


def sampled_token_loss(student_logits: torch.Tensor, token_ids: torch.Tensor, teacher_logprobs: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
    """Per position [N] ``sampled_reverse_kl`` of the entry marked ``SAMPLED_TOKEN_MASK`` (the sampled token and the
    teacher's log-probability of it); 0 where a position has none (masked, or not scored)."""
    logits = student_logits.float()
    vocab = logits.shape[-1]
    teacher = teacher_logprobs.float()
    marked = ((mask == SAMPLED_TOKEN_MASK) & torch.isfinite(teacher) & (teacher > -1e8) & (token_ids >= 0)
              & (token_ids < vocab))
    slot = marked.int().argmax(-1, keepdim=True)  # the marked entry (any one when none: then unused)
    ids = token_ids.long().gather(1, slot).clamp(0, vocab - 1)
    student = (logits.gather(1, ids) - torch.logsumexp(logits, -1, keepdim=True))[:, 0]
    estimate = sampled_reverse_kl(student, teacher.gather(1, slot)[:, 0])
    return torch.where(marked.any(-1), estimate, torch.zeros_like(estimate))


def topk_tail_loss(student_logits: torch.Tensor, token_ids: torch.Tensor, teacher_logprobs: torch.Tensor,
                   mask: torch.Tensor, kind: Divergence = "forward", beta: float = 0.5,
                   tail_floor: float = TAIL_FLOOR) -> torch.Tensor:
    """Per position [N] top-k + tail divergence (or with ``reverse_sampled`` the sampled-token estimate); 0 at
    positions without a counted entry (masked)."""
    if kind == SAMPLED:
        return sampled_token_loss(student_logits, token_ids, teacher_logprobs, mask)
    log_p, log_q, present = topk_tail_logprobs(student_logits, token_ids, teacher_logprobs, mask, tail_floor)
    per_position = divergence(log_p, log_q, present, kind, beta)
    return torch.where(present[:, :-1].any(-1), per_position, torch.zeros_like(per_position))


def _chunk_losses(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, token_ids: torch.Tensor,
                  teacher_logprobs: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, kind: str,
                  beta: float, with_ce: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    logits = F.linear(hidden, weight, bias).float()
    kd = topk_tail_loss(logits, token_ids, teacher_logprobs, mask, kind, beta).sum()  # type: ignore[arg-type]
    if not with_ce:  # kd_ce_alpha 0: not computed, so the logged term is exactly 0
        return kd, logits[:0].sum()
    ce = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return kd, ce


def fused_topk_tail_loss(lm_head_weight: torch.Tensor, hidden_states: torch.Tensor, token_ids: torch.Tensor,
                         teacher_logprobs: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
                         kd_weight: float = 1.0, ce_weight: float = 0.0, kind: Divergence = "forward",
                         beta: float = 0.5, lm_head_bias: torch.Tensor | None = None,
                         chunk_size: int = 512) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Axolotl's KD pairing from hidden states: ``kd_weight`` * sum over positions of the divergence at hidden
    state p against target p (the targets are right-aligned so that target p is over token p + 1) +
    ``ce_weight`` * the summed cross-entropy of hidden state p against label p + 1. Sums, not means: the trainer
    divides by the batch's label count, as Axolotl's does. Only positions with a target or a label are projected
    on the vocabulary, ``chunk_size`` rows at a time, each chunk's logits recomputed in the backward pass
    (checkpointed) so that no [positions, vocab] tensor outlives its chunk. Returns (total, kd sum, ce sum)."""
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
    k = token_ids.shape[-1]
    ids, teacher, keep_mask = (t.reshape(-1, k) for t in (token_ids, teacher_logprobs, mask))
    shifted = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:].reshape(-1)
    rows = (keep_mask.bool().any(-1) & (kd_weight != 0)) | ((shifted != IGNORE_INDEX) & (ce_weight != 0))
    index = rows.nonzero().squeeze(-1)
    kd_sum = ce_sum = hidden[:0].sum().float()  # 0, in the graph: a batch without a trained position backpropagates
    for start in range(0, index.numel(), chunk_size):
        part = index[start:start + chunk_size]
        args = (hidden[part], lm_head_weight, lm_head_bias, ids[part], teacher[part], keep_mask[part], shifted[part])
        if torch.is_grad_enabled() and (hidden.requires_grad or lm_head_weight.requires_grad):
            kd, ce = checkpoint(_chunk_losses, *args, kind, beta, ce_weight != 0, use_reentrant=False)
        else:
            kd, ce = _chunk_losses(*args, kind, beta, ce_weight != 0)
        kd_sum = kd_sum + kd
        ce_sum = ce_sum + ce
    return kd_weight * kd_sum + ce_weight * ce_sum, kd_sum.detach(), ce_sum.detach()
