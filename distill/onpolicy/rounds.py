"""On-policy distillation in rounds: the student samples, the teacher grades every one of its tokens.

Round r (files in ``<out>/round-r/``, each step skipped when its output is complete, so a killed run resumes):
1. ``samples/``: the current checkpoint served by vLLM (``distill serve``'s machinery) samples the round's
   prompts through the factory's own pipeline (rolling window, retries, resume). Every well-formed sample is kept
   (verification ``none``): the student's wrong turns are exactly where it needs the teacher.
2. ``kd/``: the teacher scores the student's exact tokens (vLLM ``prompt_logprobs``, one prefill a sequence, no
   generation) into a KD dataset with the alignment code of ``distill export --format kd``.
3. ``data/``: with ``lmbda`` < 1, rows of an off-policy KD export are mixed in (GKD's lambda is the on-policy
   share); else the round's own rows.
4. ``model/``: ``axolotl train`` KD from the current checkpoint with the factory's KD plugin: ``kd_beta`` 1
   (default) reverse KL over the teacher's top k plus a tail bucket, or with ``reverse_kl: sampled_token`` the
   per-token estimate from the sampled token's teacher log-probability; 0 forward KL, in between JSD. No
   cross-entropy on the student's own tokens (``kd_ce_alpha`` 0), and ``passes`` (<= 2) over the round's rows:
   the steps are derived from the rows, so the student trains on fresh samples.
5. ``eval/``: ``distill eval`` of the new checkpoint (round 0 evaluates the starting one).
``<out>/rounds.json`` and ``rounds.png`` hold pass@1 per round and the teacher/student tokens spent.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from distill.onpolicy.config import OnPolicyConfig
from pipelines.spec import DatasetSpec, SpecError, load_spec

DONE = "onpolicy-trained.json"


def round_problems(spec: DatasetSpec, round_index: int, per_round: int) -> list[dict[str, Any]]:
    """Problems [(r-1)*N, r*N) of the prompts' source; a source that runs out wraps around."""
    from pipelines.source import iter_problems

    rows = list(iter_problems(spec.source, None))
    if not rows:
        raise SpecError(f"prompts: {spec.source.path} has no problems")
    start = (round_index - 1) * per_round
    return [rows[(start + i) % len(rows)] for i in range(per_round)]


def round_spec(base: DatasetSpec, cfg: OnPolicyConfig, round_index: int, source: Path, url: str | None,
               served_name: str) -> DatasetSpec:
    """The round's sampling spec: the student behind ``url`` (its vLLM server, served as ``served_name``), or with
    ``url`` None the checkpoint ``served_name`` in-process (transformers, seeded by the round)."""
    s = cfg.sampling
    spec = base.model_copy(deep=True)
    spec.name = f"{cfg.name}-round-{round_index}"
    spec.source = spec.source.model_copy(update={"path": str(source), "problem_field": "problem",
                                                  "answer_field": "gold", "id_field": "problem_id",
                                                  "config": None, "split": "train"})
    server = {"backend": "openai", "base_url": url, "seed": None} if url else \
        {"backend": "transformers", "seed": cfg.seed + round_index}
    spec.teacher = spec.teacher.model_copy(update={
        **server, "model": served_name, "num_samples": s.samples_per_prompt,
        "temperature": s.temperature, "top_p": s.top_p, "max_new_tokens": s.max_new_tokens, "top_logprobs": None,
        "max_concurrency": 16})
    spec.verification = "none"
    spec.prm = None
    spec.dedupe = spec.dedupe.model_copy(update={"enabled": False})
    spec.decontamination = spec.decontamination.model_copy(update={"benchmarks": []})
    return spec


def mix_offpolicy(export_dir: Path | None, offpolicy: Path, lmbda: float, out_dir: Path, seed: int,
                  student: str, rows_per_round: int | None = None, round_index: int = 1) -> dict[str, Any]:
    """The round's KD rows plus a seeded sample of off-policy rows, so that the on-policy share is ``lmbda``.

    ``lmbda`` 0 (the off-policy baseline, ``export_dir`` unused): ``rows_per_round`` rows (default: all of them),
    round r taking places [(r-1)*N, r*N) of one order seeded by ``seed`` (the same every round), so rounds draw
    fresh rows until the export runs out and then wrap around. The off-policy targets are token ids: the export
    must have been made with the student's tokenizer."""
    from distill.axolotl.export import MANIFEST, read_manifest, tokenizer_sha256
    from distill.axolotl.shared_tokenizer import load_tokenizer

    other = read_manifest(offpolicy)
    manifest = read_manifest(export_dir) if export_dir is not None else other
    theirs = (other.get("kd") or {}).get("distribution", {}).get("tokenizer_sha256")
    if other.get("format") != "kd" or theirs != tokenizer_sha256(load_tokenizer(student)):
        raise SpecError(f"offpolicy: {offpolicy} is not a KD export made with the student's tokenizer "
                        f"({student}); export the teacher's traces with --student {student}")
    on_rows = pq.read_table(export_dir / manifest["files"][0]["path"]).to_pylist() if export_dir is not None else []
    off_rows = [r for f in other["files"] for r in pq.read_table(offpolicy / f["path"]).to_pylist()]
    rng = random.Random(seed)
    if lmbda == 0:
        order = list(range(len(off_rows)))
        rng.shuffle(order)
        want = rows_per_round or len(off_rows)
        start = (round_index - 1) * want
        picked = [off_rows[order[(start + i) % len(order)]] for i in range(want)] if off_rows else []
    else:
        want = round(len(on_rows) * (1 - lmbda) / lmbda)
        picked = [off_rows[rng.randrange(len(off_rows))] for _ in range(want)] if off_rows else []
    rows = ([] if lmbda == 0 else on_rows) + picked
    rng.shuffle(rows)
    columns = sorted(set(on_rows[0]) & set(picked[0])) if on_rows and picked else None
    out_dir.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([{c: r[c] for c in columns} for r in rows] if columns else rows)
    pq.write_table(table, out_dir / "train.parquet")
    mixed = {**manifest, "student": student, "rows": len(rows),
             "files": [{"stage": "train", "path": "train.parquet", "rows": len(rows)}],
             "mix": {"lmbda": lmbda, "onpolicy_rows": len(rows) - len(picked), "offpolicy_rows": len(picked),
                     "offpolicy": str(offpolicy)}}
    (out_dir / MANIFEST).write_text(json.dumps(mixed, indent=2) + "\n")
    return mixed


def round_steps(rows: int, passes: float, micro_batch_size: int, gradient_accumulation_steps: int,
                cap: int | None = None) -> int:
    """Optimizer steps for ``passes`` over ``rows`` at this batch (one process), at least 1, at most ``cap``."""
    steps = max(1, math.ceil(passes * rows / (micro_batch_size * gradient_accumulation_steps)))
    return min(steps, cap) if cap else steps


def token_counts(export_dir: Path) -> dict[str, int]:
    """Tokens the teacher scored (whole sequences, one prefill each) and the student generated."""
    from distill.axolotl.export import read_manifest

    manifest = read_manifest(export_dir)
    table = pq.read_table(export_dir / manifest["files"][0]["path"], columns=["target_token_ids"])
    targets = sum(len(t) for t in table.column("target_token_ids").to_pylist())
    return {"teacher_scored_targets": targets}


SAMPLED_FROM = "sampled-from.json"


def checkpoint_fingerprint(checkpoint: str) -> str:
    """Which weights a checkpoint holds, cheaply: its weight files' names, sizes and modification times (a hub id or
    a missing folder: the name itself). Round r's samples belong to round r-1's weights: a retrained checkpoint
    (another learning rate, say) must not inherit samples drawn from the old one."""
    folder = Path(checkpoint)
    files = sorted(f for f in folder.glob("*") if f.suffix in (".safetensors", ".bin")) if folder.is_dir() else []
    text = "\n".join(f"{f.name} {f.stat().st_size} {f.stat().st_mtime_ns}" for f in files) or checkpoint
    return hashlib.sha256(text.encode()).hexdigest()


def drop_stale_round(folder: Path, checkpoint: str, echo: Callable[[str], Any]) -> None:
    """Before a round samples: when its files were made from other weights than ``checkpoint`` (or from unknown
    ones), remove what depends on the samples (samples, KD targets, mixed rows), then record the weights."""
    marker = folder / SAMPLED_FROM
    fingerprint = checkpoint_fingerprint(checkpoint)
    known = json.loads(marker.read_text()).get("fingerprint") if marker.exists() else None
    if known != fingerprint:
        stale = [folder / name for name in ("samples", "kd", "data") if (folder / name).exists()]
        if stale:
            echo(f"  {folder.name}: its samples came from other weights than {checkpoint}; sampling again")
        for path in stale:
            shutil.rmtree(path)
        marker.write_text(json.dumps({"checkpoint": checkpoint, "fingerprint": fingerprint}) + "\n")


class Rounds:
    def __init__(self, cfg: OnPolicyConfig, echo: Callable[[str], Any] = print) -> None:
        self.cfg, self.echo = cfg, echo
        self.base, _ = load_spec(cfg.prompts)
        self.cpu = not _has_cuda()

    def sample(self, r: int, checkpoint: str, folder: Path) -> dict[str, Any]:
        from distill.serve.server import ServeConfig, free_port, start_servers
        from pipelines.run.subjob import run_subjob

        stats_path = folder / "samples" / "__meta__" / "stats.json"
        if stats_path.exists():
            self.echo(f"  round {r}: samples done ({stats_path})")
            return json.loads(stats_path.read_text())
        source = folder / "prompts.jsonl"
        source.write_text("".join(json.dumps(p) + "\n" for p in round_problems(
            self.base, r, self.cfg.sampling.prompts_per_round)), encoding="utf-8")
        s = self.cfg.sampling
        if s.backend == "transformers":
            spec = round_spec(self.base, self.cfg, r, source, None, checkpoint)
            self.echo(f"  round {r}: the student {checkpoint} samples {s.prompts_per_round} prompts x "
                      f"{s.samples_per_prompt} in-process (transformers)")
            return run_subjob(spec, folder / "samples", folder / "samples.yaml", folder / "samples.log")
        serve = ServeConfig(model=checkpoint, name=f"{self.cfg.name}-student-{r}", port=free_port(),
                            dtype=s.dtype or ("float32" if self.cpu else "auto"), max_model_len=s.max_model_len,
                            seed=self.cfg.seed + r, log_dir=folder / "serve")
        self.echo(f"  round {r}: serving the student {checkpoint} with vLLM ...")
        (server,) = start_servers(serve)
        try:
            spec = round_spec(self.base, self.cfg, r, source, server.base_url, serve.served_name)
            self.echo(f"  round {r}: the student samples {s.prompts_per_round} prompts x {s.samples_per_prompt}")
            stats = run_subjob(spec, folder / "samples", folder / "samples.yaml", folder / "samples.log")
        finally:
            server.stop()
        return stats

    def grade(self, r: int, checkpoint: str, folder: Path) -> Path:
        """The teacher's top-k on the student's exact tokens (plus off-policy rows when lmbda < 1)."""
        from distill.axolotl.export import ExportOptions, export_dataset
        from distill.kd.score import build_scorer

        kd = folder / "kd"
        if not (kd / "export.json").exists():
            t = self.cfg.training
            self.echo(f"  round {r}: the teacher {self.cfg.teacher.model} scores every student token "
                      f"(top-{t.top_k} prompt_logprobs)")
            scorer = build_scorer(self.cfg.teacher.model, self.cfg.teacher.base_url)
            export_dataset(folder / "samples", kd, ExportOptions(format="kd", student=checkpoint, top_k=t.top_k,
                                                                max_seq_len=t.max_seq_len), scorer)
        if self.cfg.lmbda >= 1.0:
            return kd
        data = folder / "data"
        if not (data / "export.json").exists():
            mix_offpolicy(kd, Path(self.cfg.offpolicy), self.cfg.lmbda, data, self.cfg.seed + r, checkpoint)
        return data

    def train(self, r: int, checkpoint: str, data: Path, folder: Path) -> tuple[str, int]:
        """``axolotl train`` KD from ``checkpoint`` on the round's rows; returns the new checkpoint and its steps."""
        import yaml

        from distill.axolotl.configs import loss_for_kd_beta, write_configs
        from distill.axolotl.export import read_manifest
        from distill.axolotl.train import logged, losses, run_axolotl

        t = self.cfg.training
        manifest = read_manifest(data)
        overrides: dict[str, Any] = {"learning_rate": t.learning_rate, "kd_alpha": t.kd_alpha,
                                     "kd_ce_alpha": round(1 - t.kd_alpha, 6), "num_epochs": 1000,
                                     "seed": self.cfg.seed + r, **t.overrides}
        if t.micro_batch_size:
            overrides["micro_batch_size"] = t.micro_batch_size
        loss = {"loss": "reverse_sampled"} if t.reverse_kl == "sampled_token" else loss_for_kd_beta(t.kd_beta)

        def render(steps: int) -> Path:
            (path,) = write_configs("kd", data, manifest, checkpoint, folder / "kd.yaml", template=t.template,
                                    output_dir=folder / "model", prepared_dir=folder / "prepared",
                                    overrides={**overrides, "max_steps": steps}, smoke=t.cpu, **loss)
            return path

        # the rendered config's batch (template, CPU profile and overrides together) gives the steps for the passes
        rendered = yaml.safe_load(render(1).read_text())
        steps = round_steps(manifest["rows"], t.passes, int(rendered.get("micro_batch_size") or 1),
                            int(rendered.get("gradient_accumulation_steps") or 1), t.max_steps)
        config = render(steps)
        model = folder / "model"
        digest = hashlib.sha256(config.read_bytes() + (data / "train.parquet").read_bytes()).hexdigest()
        marker = model / DONE
        if marker.exists() and json.loads(marker.read_text()).get("sha256") == digest:
            self.echo(f"  round {r}: checkpoint done ({model})")
            return str(model), steps
        divergence = yaml.safe_load(config.read_text()).get("kd_divergence")
        self.echo(f"  round {r}: axolotl train KD from {checkpoint}, {steps} steps ({t.passes:g} passes over "
                  f"{manifest['rows']} rows, kd_divergence {divergence}, no cross-entropy on the student's tokens)"
                  if self.cfg.lmbda > 0 else
                  f"  round {r}: axolotl train KD from {checkpoint}, {steps} steps (kd_divergence {divergence})")
        output = run_axolotl("train", config, log=folder / "train.log")
        steps_loss = losses(output)
        marker.write_text(json.dumps({"sha256": digest, "losses": steps_loss, "kd_term": logged(output, "kd_term"),
                                      "ce_term": logged(output, "ce_term")}) + "\n")
        if steps_loss:
            self.echo(f"    KD loss {steps_loss[0]:.4f} -> {steps_loss[-1]:.4f}")
        return str(model), steps

    def evaluate(self, r: int, checkpoint: str) -> dict[str, Any] | None:
        from distill.eval.config import EvalConfig, ModelConfig
        from distill.eval.evaluate import evaluate

        e = self.cfg.evaluation
        if e is None or (r % e.every and r != self.cfg.rounds):
            return None
        name = f"round-{r}"
        out = self.cfg.out / f"round-{r}" / "eval"
        cfg = EvalConfig(sets=[e.set], out=out, samples=e.samples, temperature=e.temperature,
                         max_new_tokens=e.max_new_tokens, limit=e.limit, offline=e.offline,
                         models=[ModelConfig(name=name, path=checkpoint, batch_size=e.batch_size,
                                             backend=e.backend if e.backend != "auto"
                                             else "transformers" if self.cpu else "serve")])
        results = evaluate(cfg)
        run = next(iter(results["runs"][name].values()))
        head = run["clean"] or run["all"]
        self.echo(f"  round {r}: pass@1 {head['pass@1']:.1%} ± {head['pass@1_se']:.1%} ({out}/report.md)")
        return {"pass@1": head["pass@1"], "pass@1_se": head["pass@1_se"],
                "format_adherence": head.get("format_adherence")}

    def run(self) -> list[dict[str, Any]]:
        cfg = self.cfg
        cfg.out.mkdir(parents=True, exist_ok=True)
        checkpoint = str(Path(cfg.student))
        history = [{"round": 0, "checkpoint": checkpoint, **(self.evaluate(0, checkpoint) or {})}]
        self._write(history)
        for r in range(1, cfg.rounds + 1):
            folder = cfg.out / f"round-{r}"
            folder.mkdir(parents=True, exist_ok=True)
            self.echo(f"[round {r}/{cfg.rounds}]")
            if cfg.lmbda == 0:  # all off-policy: nothing of the student's is graded (the baseline arm)
                stats, data = {"samples": 0}, folder / "data"
                if not (data / "export.json").exists():
                    s = cfg.sampling
                    mix_offpolicy(None, Path(cfg.offpolicy), 0.0, data, cfg.seed, checkpoint,
                                  rows_per_round=cfg.offpolicy_rows or s.prompts_per_round * s.samples_per_prompt,
                                  round_index=r)
            else:
                drop_stale_round(folder, checkpoint, self.echo)
                stats = self.sample(r, checkpoint, folder)
                data = self.grade(r, checkpoint, folder)
            checkpoint, steps = self.train(r, checkpoint, data, folder)
            history.append({"round": r, "checkpoint": checkpoint, "train_steps": steps,
                            "student_samples": stats["samples"],
                            "student_tokens": (stats.get("tokens") or {}).get("completion_total"), **token_counts(data),
                            "mix": json.loads((data / "export.json").read_text()).get("mix"),
                            **(self.evaluate(r, checkpoint) or {})})
            self._write(history)
        return history

    def _write(self, history: list[dict[str, Any]]) -> None:
        (self.cfg.out / "rounds.json").write_text(json.dumps(history, indent=2) + "\n")
        points = [(h["round"], h["pass@1"]) for h in history if h.get("pass@1") is not None]
        if len(points) > 1:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(5, 3.2))
            ax.plot([p[0] for p in points], [100 * p[1] for p in points], marker="o")
            ax.set_xlabel("round")
            ax.set_ylabel("pass@1 (%)")
            ax.set_xticks([p[0] for p in points])
            ax.set_title(f"{self.cfg.name}: on-policy distillation")
            fig.tight_layout()
            fig.savefig(self.cfg.out / "rounds.png", dpi=100)
            plt.close(fig)


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())
