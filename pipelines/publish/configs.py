"""Split the kept traces into the Hub configs: ``default`` (SFT messages), ``kd`` (with logprobs), curriculum stages.

Pure functions over a pyarrow table of the dataset's samples; ``folder.py`` writes what they return.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

SFT_COLUMNS = ["problem_id", "sample_index", "problem", "gold", "answer", "messages", "teacher_model",
               "completion_tokens", "pass_rate", "prm_score"]
KD_COLUMNS = ["tokens", "token_logprobs", "logprobs"]
CURRICULUM_STAGES = 3


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


def curriculum_stages(kept: pa.Table, stages: int = CURRICULUM_STAGES) -> dict[str, pa.Table]:
    """Easy to hard by problem: higher pass rate first, then shorter kept traces; equal problem counts per stage.

    All samples of a problem stay in one stage. Returns ``{}`` when there are fewer problems than stages
    or the columns are missing.
    """
    if stages < 2 or not {"pass_rate", "completion_tokens", "problem_id"} <= set(kept.column_names):
        return {}
    rows = kept.select(["problem_id", "pass_rate", "completion_tokens"]).to_pylist()
    per_problem: dict[str, list[float]] = {}
    for row in rows:
        entry = per_problem.setdefault(row["problem_id"], [row["pass_rate"] or 0.0, 0.0, 0])
        entry[1] += row["completion_tokens"] or 0
        entry[2] += 1
    if len(per_problem) < stages:
        return {}
    order = sorted(per_problem, key=lambda pid: (-per_problem[pid][0], per_problem[pid][1] / per_problem[pid][2],
                                                 pid))
    stage_of = {pid: position * stages // len(order) for position, pid in enumerate(order)}
    stage_column = pa.array([stage_of[pid] for pid in kept.column("problem_id").to_pylist()], pa.int64())
    sft = sft_table(kept)
    return {f"curriculum_stage{k + 1}": sft.filter(pc.equal(stage_column, k)) for k in range(stages)}


def hub_configs(table: pa.Table, stages: int = CURRICULUM_STAGES) -> dict[str, pa.Table]:
    """Config name → table, in the order they appear on the card (``default`` first)."""
    kept = kept_traces(table)
    configs = {"default": sft_table(kept)}
    kd = kd_table(kept)
    if kd is not None:
        configs["kd"] = kd
    configs.update(curriculum_stages(kept, stages))
    return configs
