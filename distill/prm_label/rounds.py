"""``distill prm-label``: ask the teacher to finish each step prefix N times, in rounds, and write the labels.

Each round is a normal ``distill run`` (the same rolling window, retries, atomic parts and resume) over a source
of step prefixes, into ``<out>/rollouts/<round>/``, run as a sub-job (pipelines/run/subjob.py; its spec and log
beside that folder, ``<round>.yaml`` and ``<round>.log``); the teacher continues the assistant message from the prefix
(vLLM's ``continue_final_message``) and the spec's verification decides which continuations reach the gold.
With the first-error budget, round k holds step k of the traces whose earlier steps all reached the gold.
A killed run resumes round by round: finished rounds are read back, the current one resumes like any run.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from distill.prm_label import consensus
from distill.prm_label.config import LabelConfig
from distill.prm_label.plan import (
    Skipped,
    StepLabel,
    StepTrace,
    all_steps,
    label_row,
    next_steps,
    prefix_rows,
    step_label,
    step_traces,
)
from pipelines.errors import RunIncomplete
from pipelines.foreign import load_records
from pipelines.run.lock import run_lock
from pipelines.run.subjob import run_subjob
from pipelines.spec import DatasetSpec, SpecError
from pipelines.store import write_text_atomic

log = logging.getLogger("distill.prm")
LABELS = "labels.jsonl"
STATS = "stats.json"
PLAN = "plan.json"
VERDICTS = "consensus.jsonl"


def rollout_spec(spec: DatasetSpec, cfg: LabelConfig, source: Path, round_name: str) -> DatasetSpec:
    """The spec of one round: the dataset's teacher, prompt and verification over the prefixes, N samples each."""
    data = spec.model_dump(mode="json")
    data["name"] = f"{spec.name}-prm-label-{round_name}"
    data["source"] = {"path": str(source), "problem_field": "problem", "answer_field": "gold", "id_field": "id",
                      "prefix_field": "prefix"}
    teacher = {**data["teacher"], "num_samples": cfg.completions, "top_logprobs": None}
    for key in ("temperature", "max_new_tokens"):
        if getattr(cfg, key) is not None:
            teacher[key] = getattr(cfg, key)
    data["teacher"] = teacher
    # prefixes of one trace share its problem text: dedupe would drop them; decontamination was done upstream
    data.pop("dedupe", None)
    data.pop("decontamination", None)
    data["dedupe"] = {"enabled": False}
    data["prm"] = None
    data["output"] = {"dir": None}
    if spec.verification != "judge":
        data["judge"] = None
    return DatasetSpec.model_validate(data)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _plan_identity(traces: list[StepTrace], cfg: LabelConfig, spec: DatasetSpec) -> dict[str, Any]:
    import hashlib

    digest = hashlib.sha256("\n".join(f"{t.id}\t{t.head}{''.join(t.steps)}" for t in traces).encode()).hexdigest()
    return {"traces": len(traces), "traces_sha256": digest, "config": cfg.model_dump(mode="json"),
            "teacher": spec.teacher.model, "verification": spec.verification}


def _check_plan(out_dir: Path, identity: dict[str, Any]) -> None:
    path = out_dir / PLAN
    if path.exists():
        before = json.loads(path.read_text())
        changed = sorted(k for k in identity if before.get(k) != identity[k])
        if changed:
            raise SpecError(f"--out: {out_dir} holds labels made with other {', '.join(changed)}; rerun with "
                            "--fresh to start over, or give another --out")
    write_text_atomic(path, json.dumps(identity, indent=2) + "\n")


def discard(out_dir: Path) -> None:
    """``--fresh``: remove what an earlier labelling wrote into ``out_dir``."""
    shutil.rmtree(out_dir / "rollouts", ignore_errors=True)
    for name in (LABELS, STATS, PLAN, VERDICTS):
        (out_dir / name).unlink(missing_ok=True)


def _finished(round_dir: Path, rows: list[dict[str, Any]]) -> bool:
    """The round's dataset is written and holds every prefix without a failed sample: no run needed."""
    from pipelines.run.plan import finished_ids
    from pipelines.store import meta_dir

    return (meta_dir(round_dir) / "stats.json").is_file() and \
        finished_ids(round_dir / ".cache").issuperset(r["id"] for r in rows)


def run_round(spec: DatasetSpec, cfg: LabelConfig, traces: list[StepTrace], steps: dict[str, list[int]],
              round_dir: Path, name: str, api_key: str | None, progress_every_s: float,
              judge_api_key: str | None = None) -> dict[str, StepLabel]:
    """One rollout run over the prefixes in ``steps``; the label of each prefix id."""
    round_dir.mkdir(parents=True, exist_ok=True)
    rows = prefix_rows(traces, steps)
    source = round_dir / "prefixes.jsonl"
    _write_jsonl(source, rows)
    round_spec = rollout_spec(spec, cfg, source, name)
    log_path = round_dir.parent / f"{name}.log"
    if _finished(round_dir, rows):
        log.info("prm-label %s: done earlier (%d step prefixes)", name, len(rows))
    else:
        # logged once the run is done: a run that cannot start (its preflight) ends the command in one line
        run_subjob(round_spec, round_dir, round_dir.parent / f"{name}.yaml", log_path, api_key=api_key,
                   judge_api_key=judge_api_key, progress_every_s=progress_every_s)
        log.info("prm-label %s: %d step prefixes x %d completions (log: %s)", name, len(rows), cfg.completions,
                 log_path)
    samples: dict[str, list[dict[str, Any]]] = {}
    for record in load_records(round_dir):
        samples.setdefault(str(record["problem_id"]), []).append(record)
    labels = {pid: label for pid, group in samples.items() if (label := step_label(group)) is not None}
    missing = [r["id"] for r in rows if r["id"] not in labels]
    if missing:
        raise RunIncomplete(f"{len(missing)} step prefixes of round {name} got no completion back (teacher "
                            f"errors, e.g. {missing[0]}); rerun the same command to ask for them again")
    return labels


def label_dataset(in_path: Path | str, out_dir: Path, spec: DatasetSpec, cfg: LabelConfig,
                  api_key: str | None = None, judge_api_key: str | None = None, fresh: bool = False,
                  progress_every_s: float = 30.0) -> dict[str, Any]:
    """Label every labellable trace of ``in_path``; writes ``labels.jsonl`` and ``stats.json``, returns the stats."""
    if cfg.consensus and spec.judge is None:
        raise SpecError("--consensus: the spec has no judge: section (base_url, model, rubric); add one, or "
                        "give --judge-url and --judge-model")
    if spec.verification == "none":
        raise SpecError("verification: 'none' cannot tell whether a completion reaches the gold; use the "
                        "dataset's rule (math, exact, choice, ...)")
    skipped = Skipped()
    traces = step_traces(load_records(in_path), cfg.split, cfg.split_pattern, skipped)
    if cfg.limit:
        traces = traces[:cfg.limit]
    if not traces:
        raise SpecError(f"--in: {in_path} has no trace to label (a gold answer and a thought with steps); "
                        f"skipped: {json.dumps(skipped.counts)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(out_dir):
        if fresh:
            discard(out_dir)
        _check_plan(out_dir, _plan_identity(traces, cfg, spec))
        labels: dict[str, dict[int, StepLabel]] = {}
        rounds: list[dict[str, Any]] = []

        def merge(found: dict[str, StepLabel]) -> None:
            for pid, label in found.items():
                trace_id, k = pid.rsplit("#", 1)
                labels.setdefault(trace_id, {})[int(k)] = label

        def schedule() -> Any:  # first-error: each round is chosen from the labels of the rounds before it
            if cfg.until == "all":
                yield "all", all_steps(traces, cfg.max_steps)
                return
            for k in range(cfg.max_steps):
                steps = next_steps(traces, labels, k, cfg.max_steps)
                if not steps:
                    return
                yield f"step-{k}", steps

        for name, steps in schedule():
            found = run_round(spec, cfg, traces, steps, out_dir / "rollouts" / name, name, api_key,
                              progress_every_s, judge_api_key)
            merge(found)
            rounds.append({"round": name, "prefixes": len(found),
                           "positive": sum(v.hard for v in found.values())})
        rows = [row for t in traces if (row := label_row(t, labels.get(t.id, {}), cfg.until)) is not None]
        stats = _stats(traces, rows, rounds, skipped, cfg)
        if cfg.consensus:
            assert spec.judge is not None
            verdicts, failed = consensus.judge_rows(consensus.StepJudge(spec.judge, judge_api_key), rows,
                                                    out_dir / VERDICTS)
            if failed:
                raise RunIncomplete(f"the judge failed on {failed} traces; rerun the same command to ask again "
                                    "(its verdicts so far are kept)")
            for row in rows:
                row["judge_first_error"] = verdicts[row["id"]]
            kept = [r for r in rows if consensus.agrees(r, verdicts[r["id"]])]
            stats["consensus"] = {"judge": spec.judge.model, "judged": len(rows), "agreed": len(kept),
                                  "agreement": round(len(kept) / len(rows), 4) if rows else None}
            _write_jsonl(out_dir / "labels-all.jsonl", rows)
            rows = kept
        _write_jsonl(out_dir / LABELS, rows)
        stats["rows"] = len(rows)
        write_text_atomic(out_dir / STATS, json.dumps(stats, indent=2) + "\n")
        return stats


def _stats(traces: list[StepTrace], rows: list[dict[str, Any]], rounds: list[dict[str, Any]], skipped: Skipped,
           cfg: LabelConfig) -> dict[str, Any]:
    steps = [label for row in rows for label in row["labels"]]
    soft = [s for row in rows for s in row["soft_labels"]]
    capped = sum(min(len(t.steps), cfg.max_steps) for t in traces)
    first_errors: dict[str, int] = {}
    for row in rows:
        key = str(row["first_error"])
        first_errors[key] = first_errors.get(key, 0) + 1
    return {"traces": len(traces), "skipped": skipped.counts, "completions_per_step": cfg.completions,
            "until": cfg.until, "max_steps": cfg.max_steps, "rounds": rounds,
            "steps_labelled": len(steps), "steps_positive": sum(steps),
            "steps_not_asked": capped - len(steps),  # what the first-error budget saved
            "rollouts": len(steps) * cfg.completions,
            "soft_label_mean": round(sum(soft) / len(soft), 4) if soft else None,
            "traces_with_error": sum(row["first_error"] >= 0 for row in rows), "first_error": first_errors}
