"""Where a student puts its probability mass, teacher-forced on the teacher's own traces.

On the teacher's traces of held-out problems (a KD export: the teacher scored every position, its top k kept), each
assistant position of each trace is fed to the student as it is (teacher forcing), and two numbers are averaged
over positions: the student's mass on the teacher's top-k ids, and its mass on the digit tokens outside them. A
student that learnt the teacher's distribution puts about the teacher's own top-k mass on the block; a loss blind
to the outside (``kd_normalize_topk``) leaves mass there, and in an addition task the wrong digits are where it
hurts. A random init puts about k/V on the block. Computed in-process with transformers (tiny models, CPU).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.axolotl.kd_align import student_turn


@dataclass(frozen=True)
class ForcedTrace:
    """One trace: the token ids, and per predicted position p (``first`` .. ``first + len(top_ids) - 1``) the
    teacher's top-k ids and log-probabilities over token p + 1, most likely first."""

    input_ids: list[int]
    first: int
    top_ids: list[list[int]]
    top_logprobs: list[list[float]]


def digit_token_ids(tokenizer: Any) -> list[int]:
    """The ids of single-token digits (a token whose text, stripped, is one of 0-9)."""
    return [i for i in range(len(tokenizer)) if (text := tokenizer.decode([i]).strip()) and len(text) == 1
            and text in "0123456789"]


def traces_from_export(export_file: Path, tokenizer: Any, k: int) -> list[ForcedTrace]:
    """The rows of a KD export (jsonl) as teacher-forced traces, on the positions the student predicts the assistant
    content and its end-of-turn token from (the template's tokens after it are left out). The export's lists are
    right-aligned: they start one position before the assistant content and end on the last token."""
    traces = []
    for row in _export_rows(export_file):
        turn = student_turn(tokenizer, row["messages"])
        if turn is None:
            continue
        ids, logprobs = row["target_token_ids"], row["logprobs"]
        if len(ids) != len(turn.input_ids) - turn.content_start + 1:
            raise ValueError(f"{export_file}: a row's targets do not line up with its tokens "
                             f"({len(ids)} lists for {len(turn.input_ids)} tokens)")
        count = turn.content_end - turn.content_start + 1  # the content tokens and the end-of-turn token
        if len(ids[0]) < k:
            raise ValueError(f"{export_file}: the export holds the top {len(ids[0])}, fewer than k = {k}")
        traces.append(ForcedTrace(turn.input_ids, turn.content_start - 1, [p[:k] for p in ids[:count]],
                                  [p[:k] for p in logprobs[:count]]))
    return traces


def _export_rows(export_file: Path) -> list[dict[str, Any]]:
    """A KD export's rows: its ``train.jsonl`` (the diagnostic's own export) or a ``.parquet`` (a training export)."""
    if export_file.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(export_file).to_pylist()
    from prm.jsonl import json_lines

    return [row for _, row in json_lines(export_file)]


def mass_report(model: Any, traces: list[ForcedTrace], digit_ids: list[int]) -> dict[str, float]:
    """Means over every predicted position: ``topk_mass`` (the student's probability on the teacher's top-k ids),
    ``digit_mass_outside`` (on digit ids outside them), ``teacher_topk_mass`` (the teacher's own on the same ids,
    the block's ceiling for a student that matches the teacher); ``top1_agree`` (the student's most likely token
    is the teacher's), ``teacher_top1_mass`` (the student's probability on the teacher's most likely token), and
    the divergences over the k + 1 outcomes of the factory's KD losses (the teacher's top k and a tail bucket):
    ``forward_kl`` KL(p || q), ``reverse_kl`` KL(q || p), and ``reverse_kl_over_0.1`` (the share of positions
    where the reverse KL exceeds 0.1 nats)."""
    import torch

    digits = torch.tensor(digit_ids, dtype=torch.long)
    topk_sum = digit_sum = teacher_sum = agree = top1 = forward = reverse = stuck = 0.0
    positions = 0
    model.eval()
    with torch.no_grad():
        for trace in traces:
            logits = model(torch.tensor([trace.input_ids])).logits[0].float()
            rows = torch.arange(trace.first, trace.first + len(trace.top_ids))
            probs = torch.softmax(logits[rows], -1)  # [positions, V]
            ids = torch.tensor(trace.top_ids, dtype=torch.long)
            topk_sum += probs.gather(1, ids).sum().item()
            outside = torch.ones(len(rows), probs.shape[-1], dtype=torch.bool)
            outside[torch.arange(len(rows))[:, None], ids] = False
            digit_probs = probs[:, digits] * outside[:, digits]
            digit_sum += digit_probs.sum().item()
            teacher_sum += sum(math.exp(v) for row in trace.top_logprobs for v in row)
            q = probs.gather(1, ids).clamp_min(1e-12)
            p = torch.tensor(trace.top_logprobs, dtype=torch.float32).exp()
            q_all = torch.cat([q, (1 - q.sum(-1, keepdim=True)).clamp_min(1e-12)], -1)
            p_all = torch.cat([p, (1 - p.sum(-1, keepdim=True)).clamp_min(1e-12)], -1)
            forward += (p_all * (p_all.log() - q_all.log())).sum().item()
            per_position = (q_all * (q_all.log() - p_all.log())).sum(-1)
            reverse += per_position.sum().item()
            stuck += (per_position > 0.1).sum().item()
            agree += (probs.argmax(-1) == ids[:, 0]).sum().item()
            top1 += q[:, 0].sum().item()
            positions += len(rows)
    if not positions:
        raise ValueError("no teacher-forced positions: the diagnostic's export is empty")
    return {"topk_mass": topk_sum / positions, "digit_mass_outside": digit_sum / positions,
            "teacher_topk_mass": teacher_sum / positions, "top1_agree": agree / positions,
            "teacher_top1_mass": top1 / positions, "forward_kl": forward / positions, "reverse_kl": reverse / positions,
            "reverse_kl_over_0.1": stuck / positions, "positions": positions}


def diagnose(models: dict[str, Path], export_file: Path, k: int, out: Path) -> dict[str, dict[str, float]]:
    """``mass_report`` of each model folder (transformers checkpoints sharing the export's tokenizer) on the
    export's traces; written to ``out`` (JSON) and returned."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Loading weights" bar per model otherwise
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    first = next(iter(models.values()))
    tokenizer = AutoTokenizer.from_pretrained(first)
    traces = traces_from_export(export_file, tokenizer, k)
    digit_ids = digit_token_ids(tokenizer)
    report = {}
    for name, folder in models.items():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        report[name] = {**mass_report(model, traces, digit_ids), "top_k": k}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def main() -> None:
    """``python -m lab.diagnostic EXPORT OUT NAME=MODEL ... [--top-k K] [--rows N]``: the report of each model on
    the last N rows of a KD export (jsonl or parquet), printed and written to OUT."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("export", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("models", nargs="+", help="name=model folder")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--rows", type=int, default=None, help="only the export's last N rows")
    args = parser.parse_args()
    export = args.export
    if args.rows:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = _export_rows(export)[-args.rows:]
        export = args.out.with_suffix(".rows.parquet")
        export.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), export)
    models = dict(m.split("=", 1) for m in args.models)
    for name, values in diagnose({n: Path(p) for n, p in models.items()}, export, args.top_k, args.out).items():
        print(name, " ".join(f"{k} {v:.4f}" for k, v in values.items()))


if __name__ == "__main__":
    main()
