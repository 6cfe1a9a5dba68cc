"""Why top-k + tail reverse KL does not converge from a random init (docs/lab.md, the paired comparison's run 2).

Measured on a finished lab run's own files (its teacher-scored KD export of the verified traces and its random
inits, e.g. ``out/lab/onpolicy``), per seed, with the recipe the comparison trained (1,000 Axolotl steps, batch 32,
cosine from the learning rate, pure KD: ``kd_alpha`` 1, ``kd_ce_alpha`` 0):

- ``fwd``: forward KL (the control that converges);
- ``rev``: reverse KL, the comparison's arm;
- ``rev-lr1e-3``: reverse KL at a third of the learning rate (is it the step size?);
- ``rev-6k``: reverse KL for 6 x the steps (is it only slow?);
- ``rev-warm``: reverse KL for 300 steps at 1e-3 from the ``fwd`` student (does the loss itself hold its optimum
  when started near it?).

Each student is then teacher-forced on the export's rows (lab/diagnostic.py): the divergences over the loss's own
k + 1 outcomes, the share of positions still above 0.1 nats of reverse KL, whether its most likely token is the
teacher's, and its mass on the teacher's top 1, top k and on wrong digits.

    python -m lab.reverse_probe --lab out/lab/onpolicy --seeds 0 1 --out out/lab/reverse-probe
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lab.config import student_overrides
from lab.probe import train_student

# name: (loss, learning rate, steps, start from)
ARMS: dict[str, tuple[str | None, float, int, str | None]] = {
    "fwd": (None, 3e-3, 1000, None),
    "rev": ("reverse", 3e-3, 1000, None),
    "rev-lr1e-3": ("reverse", 1e-3, 1000, None),
    "rev-6k": ("reverse", 3e-3, 6000, None),
    "rev-warm": ("reverse", 1e-3, 300, "fwd"),
}


def train(name: str, export: Path, student: Path, out: Path, seed: int, loss: str | None, lr: float,
          steps: int) -> dict[str, Any]:
    """Render with `distill config kd` as the lab does (pure KD), train with Axolotl; the losses it logged."""
    sets = student_overrides(steps, 32, lr, seed) | {"kd_alpha": 1.0, "kd_ce_alpha": 0.0}
    return train_student("kd", f"{name}-s{seed}", export, student, out, sets, ["--loss", loss] if loss else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lab", type=Path, required=True, help="a finished lab run (its exports/ and students/)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--rows", type=int, default=300, help="export rows teacher-forced in the diagnostic")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("out/lab/reverse-probe"))
    args = parser.parse_args()

    import pyarrow.parquet as pq

    from lab.diagnostic import diagnose

    export = args.lab / "exports" / "kd-filtered"
    args.out.mkdir(parents=True, exist_ok=True)
    rows = args.out / "diagnostic-rows.parquet"
    pq.write_table(pq.read_table(export / "train.parquet").slice(0, args.rows), rows)
    trained: dict[str, Path] = {}
    records: dict[str, Any] = {}
    for seed in args.seeds:
        for name in args.arms:
            loss, lr, steps, start = ARMS[name]
            student = args.out / f"{start}-s{seed}" if start else args.lab / "students" / f"init-s{seed}"
            records[f"{name}-s{seed}"] = train(name, export, student, args.out, seed, loss, lr, steps)
            trained[f"{name}-s{seed}"] = args.out / f"{name}-s{seed}"
    report = diagnose({"teacher": args.lab / "teacher", **trained}, rows, args.top_k, args.out / "diagnostic.json")
    keys = ["final_loss", "forward_kl", "reverse_kl", "reverse_kl_over_0.1", "top1_agree", "teacher_top1_mass",
            "topk_mass", "digit_mass_outside"]
    lines = ["| student | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, values in report.items():
        values = {**values, **records.get(name, {})}
        lines.append(f"| {name} | " + " | ".join("–" if values.get(k) is None else f"{values[k]:.3f}" for k in keys)
                     + " |")
    table = "\n".join(lines) + "\n"
    (args.out / "probe.md").write_text(table, encoding="utf-8")
    (args.out / "probe.json").write_text(json.dumps({"diagnostic": report, "training": records}, indent=2) + "\n")
    print(table)


if __name__ == "__main__":
    main()
