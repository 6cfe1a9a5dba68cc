"""The lab's PRM stage (issue 16), between the teacher's traces and the students, as the commands a user types:

1. `distill prm-label` on the teacher's traces (kept and rejected): Math-Shepherd labels from the served teacher;
2. `distill config prm` + `distill train`: one Axolotl PRM per label kind (hard: any completion reaches the gold;
   soft: most do), each from the teacher's checkpoint with a fresh 2-class head;
3. `distill run` on held-out problems, every trace labelled with its first wrong step by lab/step_truth.py, then
   `distill prm-eval` of each PRM on them (ProcessBench F1); the Monte Carlo labels themselves are scored against
   the same truth on the train traces;
4. `distill prm-score` with the chosen PRM over the verified traces: the ``data: prm`` students train on what
   it keeps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from lab.step_truth import first_wrong_step, write_labelled
from lab.tasks import problems
from pipelines.foreign import load_records

SPLIT = "lines"  # an addition thought has one step per line
HELD_OUT_SEED = 7919  # the PRM's held-out problems: another held-out stream than the students' evaluation


class PrmStage:
    def __init__(self, loop: Any, teacher: Path) -> None:
        self.loop, self.teacher = loop, teacher
        self.cfg = loop.cfg.prm
        self.dir = loop.out / "prm"

    def run(self, base_url: str, traces: Path) -> tuple[Path, str]:
        """The PRM-filtered traces and the stage's markdown summary."""
        labels = self.label(traces)
        held_out = self.held_out_set(base_url)
        prms = {kind: self.train(labels, kind) for kind in self.cfg.labels}
        reports = {kind: self.evaluate(prm, held_out) for kind, prm in prms.items()}
        threshold = self.cfg.filter_threshold
        if threshold == "best":
            threshold = reports[self.cfg.filter_with]["best_threshold"]
        filtered = self.filter(traces, prms[self.cfg.filter_with], float(threshold))
        return filtered, self.summary(labels, traces, held_out, reports, filtered, float(threshold))

    def label(self, traces: Path) -> Path:
        c = self.cfg
        self.loop.stage(3, f"PRM labels: distill prm-label, {c.completions} teacher completions from each step "
                           f"prefix ({c.until})")
        out = self.dir / "labels"
        self.loop.distill("prm-label", traces, "--out", out, "--split", SPLIT, "--completions", c.completions,
                          "--until", c.until)
        return out / "labels.jsonl"

    def held_out_set(self, base_url: str) -> Path:
        """The teacher's traces on held-out problems, each labelled with its true first wrong step."""
        self.loop.stage(3, f"PRM eval set: the teacher's traces on {self.cfg.held_out_problems} held-out problems, "
                           "first wrong step known exactly")
        folder = self.dir / "held-out"
        folder.mkdir(parents=True, exist_ok=True)
        source = folder / "problems.jsonl"
        rows = problems(self.cfg.held_out_problems, HELD_OUT_SEED, held_out=True,
                        level=self.loop.cfg.teacher.levels[-1])
        source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        spec = yaml.safe_load((self.loop.out / "spec-filtered.yaml").read_text())
        spec.update(name=f"{spec['name']}-prm-held-out")
        spec["source"]["path"] = str(source.resolve())
        spec["teacher"]["base_url"] = base_url
        spec_path = folder / "spec.yaml"
        spec_path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
        self.loop.distill("run", spec_path, "--out", folder / "traces")
        labelled = folder / "labelled.jsonl"
        counts = write_labelled(load_records(folder / "traces"), labelled, SPLIT)
        self.loop.echo(f"    {counts['traces']} distinct traces: {counts['erroneous']} with a wrong step, "
                       f"{counts['correct']} right throughout ({labelled})")
        return labelled

    def train(self, labels: Path, kind: str) -> Path:
        c = self.cfg
        self.loop.stage(3, f"PRM training ({kind} labels): Axolotl, {c.max_steps} steps from the teacher's "
                           "checkpoint")
        name = f"prm-{kind}"
        config = self.loop.out / "configs" / f"{name}.yaml"
        sets = {"max_steps": c.max_steps, "micro_batch_size": c.micro_batch_size, "learning_rate": c.learning_rate,
                "lr_scheduler": "cosine", "warmup_steps": 10, "num_epochs": 1000, "logging_steps": 50,
                "seed": 0}
        self.loop.distill("config", "prm", "--data", labels, "--labels", kind, "--student", self.teacher,
                          "--out", config, "--output-dir", self.dir / name, "--prepared-dir",
                          self.loop.out / "prepared" / name, "--smoke",
                          *(a for k, v in sets.items() for a in ("--set", f"{k}={v}")))
        return self.loop.train_config(config)

    def evaluate(self, prm: Path, held_out: Path) -> dict[str, Any]:
        out = prm.parent / f"{prm.name}-eval.json"
        self.loop.distill("prm-eval", "--model", prm, "--style", "stepwise", "--data", held_out,
                          "--threshold", self.cfg.threshold, "--out", out)
        return json.loads(out.read_text())

    def filter(self, traces: Path, prm: Path, threshold: float) -> Path:
        self.loop.stage(3, f"PRM filter: distill prm-score with {prm.name} at threshold {threshold}")
        out = self.loop.out / "traces" / "prm"
        self.loop.distill("prm-score", "--in", traces, "--out", out, "--model", prm, "--style", "stepwise",
                          "--split", SPLIT, "--threshold", threshold, "--aggregation", "min")
        return out

    def summary(self, labels: Path, traces: Path, held_out: Path, reports: dict[str, dict[str, Any]],
                filtered: Path, threshold: float) -> str:
        lines = ["", "PRM (issue 16): ProcessBench-style F1 on the teacher's held-out traces "
                     f"({held_out.name}: {_count(held_out)} traces), threshold {self.cfg.threshold}", "",
                 "| PRM | F1 | acc. erroneous | acc. correct | best F1 (threshold, chosen on this set) |",
                 "|---|---|---|---|---|"]
        for kind, r in reports.items():
            lines.append(f"| {kind} labels | {r['f1']:.3f} | {r['acc_erroneous']:.3f} | {r['acc_correct']:.3f} | "
                         f"{r['best_f1']:.3f} ({r['best_threshold']}) |")
        quality = label_quality(labels)
        lines += ["", "Monte Carlo labels against the true first wrong step, on the train traces "
                      f"({quality['traces']} traces):", "",
                  "| labels | first error right | F1 |", "|---|---|---|"]
        for kind in ("hard", "soft"):
            q = quality[kind]
            lines.append(f"| {kind} | {q['exact']:.3f} | {q['f1']:.3f} |")
        lines += ["", f"{filter_report(traces, filtered)} Threshold {threshold} ({self.cfg.filter_with} PRM"
                      + (", the best F1 on the held-out traces)." if self.cfg.filter_threshold == "best" else ").")]
        return "\n".join(lines) + "\n"


def _count(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def label_quality(labels: Path) -> dict[str, Any]:
    """How often the hard and the soft (>= 0.5) labels put the first error where it truly is; F1 as ProcessBench
    (only ``until: all`` labels see past a first failing step, so a first-error row ends there either way)."""
    from prm.evaluate import processbench_f1

    rows = [json.loads(line) for line in labels.read_text().splitlines() if line.strip()]
    truth = [first_wrong_step(r["prompt"], r["completions"]) for r in rows]
    out: dict[str, Any] = {"traces": len(rows)}
    for kind in ("hard", "soft"):
        predicted = []
        for r in rows:
            good = r["labels"] if kind == "hard" else [s >= 0.5 for s in r["soft_labels"]]
            predicted.append(next((i for i, ok in enumerate(good) if not ok), -1))
        # a row cut at its first failing step (or at max_steps) is judged on the steps it has
        truth_cut = [t if t < len(r["completions"]) else -1 for t, r in zip(truth, rows, strict=True)]
        exact = sum(p == t for p, t in zip(predicted, truth_cut, strict=True)) / len(rows) if rows else 0.0
        out[kind] = {"exact": exact, **processbench_f1(predicted, truth_cut)}
    return out


def filter_report(traces: Path, filtered: Path) -> str:
    """What the PRM filter removed from the verified traces, against the truth: wrong steps behind right answers."""
    before = [r for r in load_records(traces) if r.get("kept")]
    after = {(r["problem_id"], r.get("sample_index")) for r in load_records(filtered) if r.get("kept")}
    def wrong(r: dict[str, Any]) -> bool:
        steps = [s.strip() for s in (r.get("thought") or "").splitlines() if s.strip()]
        return bool(steps) and first_wrong_step(r["problem"], steps) >= 0

    removed = [r for r in before if (r["problem_id"], r.get("sample_index")) not in after]
    bad_before = sum(wrong(r) for r in before)
    bad_removed = sum(wrong(r) for r in removed)
    return (f"PRM filter: of {len(before)} verified traces ({bad_before} with a wrong step behind a right answer), "
            f"it removed {len(removed)}, {bad_removed} of them with a wrong step "
            f"(precision {bad_removed / len(removed):.2f}, recall {bad_removed / bad_before:.2f})."
            if removed and bad_before else
            f"PRM filter: of {len(before)} verified traces ({bad_before} with a wrong step), it removed "
            f"{len(removed)}.")


def random_subset(traces: Path, size: int, seed: int, out: Path) -> dict[str, Any]:
    """The PRM filter's control: ``size`` of the verified (kept) traces of ``traces`` drawn at random with
    ``seed``, written as a dataset folder of the same layout (every row, ``kept`` true only on the drawn ones,
    ``__meta__`` copied), so that `distill export` reads it as it reads the PRM's. Returns what it drew."""
    import random
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.store import meta_dir, write_text_atomic

    shards = sorted(traces.glob("data-*.parquet"))
    table = pa.concat_tables([pq.read_table(s) for s in shards], promote_options="default")
    kept = [i for i, k in enumerate(table.column("kept").to_pylist()) if k]
    if not 0 < size <= len(kept):
        raise ValueError(f"random subset: size {size} of {len(kept)} verified traces")
    drawn = set(random.Random(seed).sample(kept, size))
    table = table.set_column(table.column_names.index("kept"), "kept",
                             pa.array([i in drawn for i in range(table.num_rows)], pa.bool_()))
    out.mkdir(parents=True, exist_ok=True)
    meta_dir(out).mkdir(exist_ok=True)
    for old in out.glob("data-*.parquet"):
        old.unlink()
    tmp = out / ".data-00000.tmp"
    pq.write_table(table, tmp)
    tmp.replace(out / "data-00000-of-00001.parquet")
    for name in ("spec.yaml", "stats.json"):
        if (meta_dir(traces) / name).is_file():
            shutil.copyfile(meta_dir(traces) / name, meta_dir(out) / name)
    report = {"source": str(traces), "verified": len(kept), "size": size, "seed": seed}
    write_text_atomic(meta_dir(out) / "random-subset.json", json.dumps(report, indent=2) + "\n")
    return report
