"""Split the kept traces into the Hub configs: ``default`` (SFT messages), ``kd`` (with logprobs), curriculum stages.

Pure functions over a pyarrow table of the dataset's samples; ``folder.py`` writes what they return.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from distill.axolotl.curriculum import CurriculumConfig, split_stages

SFT_COLUMNS = ["problem_id", "sample_index", "problem", "gold", "answer", "messages", "teacher_model",
               "completion_tokens", "pass_rate", "prm_score"]
KD_COLUMNS = ["tokens", "token_logprobs", "logprobs"]


def kept_traces(table: pa.Table) -> pa.Table:
    """The samples kept by curation (and the PRM), with messages."""
    mask = pc.fill_null(table.column("kept"), False)
    kept = table.filter(mask)
    return kept.filter(pc.is_valid(kept.column("messages")))


def sft_table(kept: pa.Table) -> pa.Table:
    return kept.select([c for c in SFT_COLUMNS if c in kept.column_names])


def kd_table(kept: pa.Table) -> pa.Table | None:
    """Kept traces that carry top-k logprobs, or None when the run did not ask for them."""
    if not all(c in kept.column_names for c in KD_COLUMNS):
        return None
    with_logprobs = kept.filter(pc.is_valid(kept.column("logprobs")))
    if with_logprobs.num_rows == 0:
        return None
    return with_logprobs.select([c for c in SFT_COLUMNS + KD_COLUMNS if c in kept.column_names])


def curriculum_stages(kept: pa.Table, config: CurriculumConfig | None = None) -> dict[str, pa.Table]:
    """Issue 4's cold-start curriculum (``distill.axolotl.curriculum.split_stages``) on completion tokens:
    stage 1 = short traces of easy problems, stage 2 = the rest, each ordered easy to hard.

    Returns ``{}`` when the columns are missing or a stage would be empty.
    """
    if not {"pass_rate", "completion_tokens"} <= set(kept.column_names) or kept.num_rows == 0:
        return {}
    lengths = [t or 0 for t in kept.column("completion_tokens").to_pylist()]
    first, second = split_stages(kept.column("pass_rate").to_pylist(), lengths, config or CurriculumConfig())
    if not first or not second:
        return {}
    sft = sft_table(kept)
    return {"curriculum_stage1": sft.take(first), "curriculum_stage2": sft.take(second)}


def hub_configs(table: pa.Table, curriculum: CurriculumConfig | None = None) -> dict[str, pa.Table]:
    """Config name → table, in the order they appear on the card (``default`` first)."""
    kept = kept_traces(table)
    configs = {"default": sft_table(kept)}
    kd = kd_table(kept)
    if kd is not None:
        configs["kd"] = kd
    configs.update(curriculum_stages(kept, curriculum))
    return configs
