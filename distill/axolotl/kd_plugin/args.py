"""The plugin's config keys (on top of Axolotl's KD keys) and the training arguments they become."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from axolotl.integrations.kd.args import KDArgs, KDTrainingArgsMixin


class TopKTailKDArgs(KDArgs):
    """``kd_divergence``: forward (KL(teacher || student)), reverse (KL(student || teacher)) or jsd (GKD's
    generalized JSD with ``kd_jsd_beta``, the teacher's weight in the mixture), all over the k + 1 outcomes; or
    reverse_sampled (the sampled-token estimate of KL(student || teacher), for rows the student sampled)."""

    kd_divergence: Literal["forward", "reverse", "jsd", "reverse_sampled"] | None = None
    kd_jsd_beta: float | None = None


@dataclass
class TopKTailKDTrainingArgsMixin(KDTrainingArgsMixin):
    kd_divergence: str | None = None
    kd_jsd_beta: float | None = None
