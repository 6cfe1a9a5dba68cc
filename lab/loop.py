"""The whole distillation loop on this machine, offline, as a user of the factory: each stage is the `distill`
command (or Axolotl run) a user would type, printed before it runs (`distill run` is that same run as a sub-job of
the loop, pipelines/run/subjob.py, its log in ``logs/``).

1. train (or reuse) a tiny teacher;  2. serve it with vLLM (`distill serve`);  3. `distill run`: n samples per
problem at a temperature where some traces are wrong (with a ``prm:`` section, then the PRM stage of
lab/prm_stage.py: labels, PRM training and evaluation, the PRM filter);  4. filter, then `distill export`
SFT and KD (the teacher scores the student's exact tokens);  5. students of a smaller shape, one random init,
the same steps: `axolotl train` SFT and KD;  6. `distill eval` the teacher, the untrained student and the students
on held-out problems;  7. the table and the plots.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from distill.axolotl.configs import LEGACY_LOSS, loss_for_kd_beta
from lab.config import LabConfig, Variant, model_name, student_overrides
from lab.tasks import get_task, problems
from pipelines.run.subjob import run_subjob
from pipelines.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parents[1]
DISTILL = [sys.executable, "-m", "distill.cli"]
STAGES = 7
DERIVED = ("answer_only", "shortest")  # data kinds derived from the verified traces (lab/budget.py)
ExportKey = tuple[str, str, bool, int | None]  # (method, data, curriculum, top k of the KD targets)
# stage 1: problems the teacher solves at least half the time, traces no longer than the median
CURRICULUM = ["--curriculum", "--stage1-min-pass-rate", "0.5", "--stage1-max-length-quantile", "0.5"]


class Loop:
    """One lab run into ``out``; every stage's files stay there (and are reused when already complete)."""

    def __init__(self, cfg: LabConfig, out: Path, echo: Any = print) -> None:
        self.cfg, self.out, self.echo = cfg, Path(out), echo
        self.started = time.monotonic()
        self.task = get_task(cfg.teacher.task)

    # --- plumbing -----------------------------------------------------------------------------------------
    def stage(self, number: int, what: str) -> None:
        self.echo(f"[{number}/{STAGES}] {what}  (+{time.monotonic() - self.started:.0f}s)")

    def distill(self, *args: Any) -> str:
        """Run a `distill` command as a user would; its last line is shown, a failure is one line."""
        argv = [str(a) for a in args]
        self.echo("  $ distill " + shlex.join(argv))
        result = subprocess.run([*DISTILL, *argv], capture_output=True, text=True, cwd=ROOT,
                                stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise SpecError(f"distill {argv[0]} failed: "
                            + ((result.stderr.strip().splitlines() or result.stdout.strip().splitlines()
                                or ["no output"])[-1]))
        for line in result.stdout.strip().splitlines()[-2 if argv[0] == "lab" else -1:]:
            self.echo(f"    {line[:220]}")
        return result.stdout

    # --- stages -------------------------------------------------------------------------------------------
    def teacher(self) -> Path:
        t = self.cfg.teacher
        self.stage(1, f"teacher: a tiny Qwen2 trained from scratch on {t.task} (levels {t.levels}, {t.steps} steps"
                      + (f", {t.corrupt:.0%} corrupted examples" if t.corrupt else "") + ")")
        out = Path(t.dir) if t.dir else self.out / "teacher"
        self.distill("lab", "teacher", "--task", t.task, "--levels", ",".join(map(str, t.levels)), "--steps",
                     t.steps, "--corrupt", t.corrupt, "--seed", t.seed, "--out", out)
        return out

    def problem_files(self) -> tuple[Path, Path]:
        g, e = self.cfg.generation, self.cfg.evaluation
        folder = self.out / "problems"
        folder.mkdir(parents=True, exist_ok=True)
        train, held_out = folder / "train.jsonl", folder / "held-out.jsonl"
        levels = self.cfg.teacher.levels
        rows = [r for i, lv in enumerate(levels)
                for r in problems(_share(g.problems, len(levels), i), self.cfg.problems_seed, task=self.task.name,
                                  level=lv)]
        eval_levels = e.levels or levels
        held = [r for i, lv in enumerate(eval_levels)
                for r in problems(_share(e.problems, len(eval_levels), i), self.cfg.problems_seed, held_out=True,
                                  task=self.task.name, level=lv)]
        for path, data in ((train, rows), (held_out, held)):
            path.write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
        return train, held_out

    def spec(self, source: Path, base_url: str, data: str = "filtered", path: Path | None = None,
             num_samples: int | None = None) -> Path:
        """The run's spec; ``unfiltered`` verifies nothing, so every well-formed trace is kept."""
        g = self.cfg.generation
        spec = {
            "name": f"lab-{self.cfg.name}",
            "description": f"Lab traces of a tiny {self.task.name} teacher (distill demo).",
            "source": {"path": str(source.resolve()), "problem_field": "question", "answer_field": "answer"},
            "prompt": {"system": self.task.system_prompt},
            "teacher": {"backend": "openai", "model": "lab-teacher", "base_url": base_url,
                        "num_samples": num_samples or g.num_samples, "temperature": g.temperature, "top_p": 1.0,
                        "max_new_tokens": g.max_new_tokens, "top_logprobs": g.top_logprobs, "max_concurrency": 16},
            "verification": self.task.verification if data == "filtered" else "none",
            "dedupe": {"enabled": False},  # "12 + 34" and "12 + 43" are different problems
            "run": {"batch_size": 32},
        }
        path = path or self.out / f"spec-{data}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
        return path

    @contextmanager
    def served_teacher(self, teacher: Path) -> Iterator[str]:
        """`distill serve` the teacher for the run, the KD scoring pass and its own evaluation."""
        from distill.serve.server import die_with_parent, free_port

        self.stage(2, "serve the teacher with vLLM (distill serve; ~1 min on 2 cores)")
        argv = ["serve", str(teacher), "--name", "lab-teacher", "--port", str(free_port()), "--dtype", "float32",
                "--max-model-len", "1024", "--seed", "0", "--max-num-seqs", "16", "--log-dir",
                str(self.out / "serve-logs")]
        self.echo("  $ distill " + shlex.join(argv))
        process = subprocess.Popen([*DISTILL, *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, start_new_session=True, preexec_fn=die_with_parent)
        lines = []
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if line.startswith("ready:"):
                break
        match = re.search(r"--teacher-url (\S+)", "".join(lines))
        try:
            if not match:
                process.wait(timeout=60)
                raise SpecError("distill serve failed: " + (lines[-1].strip() if lines else "no output"))
            self.echo(f"    {lines[-2].strip()}")
            yield match.group(1)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.communicate(timeout=120)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()

    def generate(self, spec: Path, data: str) -> Path:
        g = self.cfg.generation
        self.stage(3, f"distill run: {g.num_samples} samples per problem at temperature {g.temperature} "
                      f"(top-{g.top_logprobs} log-probabilities), "
                      + ("verified against gold" if data == "filtered" else "unverified (every well-formed trace)"))
        out = self.out / "traces" / data
        self.echo("  $ distill run " + shlex.join([str(spec), "--out", str(out)]))
        # the same run as that command, as a sub-job (pipelines/run/subjob.py): its log in logs/run-<data>.log
        try:
            stats = run_subjob(load_spec(str(spec))[0], out, self.out / "logs" / f"run-{data}.yaml",
                               self.out / "logs" / f"run-{data}.log")
        except SpecError as exc:
            raise SpecError(f"distill run failed: {exc}") from None
        self.echo(f"    wrote {out}: {stats['samples']} samples of {stats['problems']} problems, kept {stats['kept']} "
                  f"({stats['pass_rate']:.1%}); reasons {json.dumps(stats['reasons'])}")
        return out

    def student_init(self, teacher: Path, seed: int) -> Path:
        return self._distill_path("lab", "student", "--teacher", teacher, "--seed", seed, "--out",
                                  self.out / "students" / f"init-s{seed}", *_shape_args(self.cfg.students.shape))

    def _distill_path(self, *args: Any) -> Path:
        return Path(self.distill(*args).strip().splitlines()[-1])

    def export_key(self, v: Variant) -> ExportKey:
        """(method, data, curriculum, k): k is the KD targets' top k (None for SFT)."""
        k = (v.top_k or self.cfg.generation.top_logprobs) if v.method == "kd" else None
        return (v.method, v.data, v.curriculum, k)

    def export(self, traces: dict[str, Path], student: Path, base_url: str) -> dict[ExportKey, Path]:
        """One export per (method, data, curriculum, k) the variants need; KD targets come from a teacher scoring
        pass on the student's exact tokens (top k up to 20: vLLM's prompt_logprobs answers the actual token on top
        of the k). The student here only lends its tokenizer (every init shares it)."""
        self.stage(4, "export the kept traces: SFT messages, and KD targets scored by the teacher on the student's "
                      "exact tokens")
        exports: dict[ExportKey, Path] = {}
        needed = [self.export_key(v) for v in self.cfg.students.variants]
        if self.cfg.onpolicy:  # the off-policy arm trains on the teacher's own traces, KD-scored
            needed.append(("kd", "filtered", False, self.cfg.generation.top_logprobs))
        for key in needed:
            method, data, curriculum, k = key
            if key in exports:
                continue
            name = [method, data] + (["curriculum"] if curriculum else []) + \
                ([f"k{k}"] if k is not None and k != self.cfg.generation.top_logprobs else [])
            out = self.out / "exports" / "-".join(name)
            extra = ["--teacher-url", base_url, "--teacher-model", "lab-teacher", "--top-k", k] if method == "kd" \
                else []
            self.distill("export", traces[data], "--format", method, "--student", student, "--max-seq-len", 512,
                         "--out", out, *extra, *(CURRICULUM if curriculum else []))
            exports[key] = out
        return exports

    def train(self, exports: dict[ExportKey, Path], inits: dict[int, Path]) -> dict[str, Path]:
        """Every variant from each seed's init, for the same number of steps; returns {model name: folder}."""
        s = self.cfg.students
        self.stage(5, f"train {len(s.variants)} student variant(s) x {len(s.seeds)} seed(s) with Axolotl, "
                      f"{s.max_steps} steps each from one random init per seed: "
                      + ", ".join(v.name for v in s.variants))
        trained = {}
        for seed in s.seeds:
            for v in s.variants:
                name = model_name(v.name, seed, len(s.seeds))
                stages = 2 if v.curriculum else 1  # the same total steps, split between the stages
                overrides = student_overrides(max(1, s.max_steps // stages), s.micro_batch_size, s.learning_rate,
                                              seed)
                loss: list[str] = []
                if v.method == "kd":
                    alpha = s.kd_alpha if v.kd_alpha is None else v.kd_alpha
                    overrides |= {"kd_alpha": alpha, "kd_ce_alpha": round(1 - alpha, 6)}
                    loss = ["--loss", LEGACY_LOSS] if v.loss == "axolotl_legacy" else \
                        [a for k, val in loss_for_kd_beta(v.kd_beta).items() for a in (f"--{k}", str(val))]
                config = self.out / "configs" / f"{name}.yaml"
                sets = [a for k, val in overrides.items() for a in ("--set", f"{k}={val}")] + loss
                output = self.distill("config", v.method, "--dataset", exports[self.export_key(v)],
                                      "--student", inits[seed], "--out", config, "--output-dir",
                                      self.out / "students" / name, "--prepared-dir", self.out / "prepared" / name,
                                      "--smoke", *(["--qat"] if v.qat else []), *sets)
                configs = [Path(p) for p in re.findall(r"wrote (\S+\.yaml)", output)]
                for path in configs:
                    self.train_config(path)
                trained[name] = Path(yaml.safe_load(configs[-1].read_text())["output_dir"])
        return trained

    def train_config(self, path: Path) -> Path:
        """`axolotl train` one rendered config, unless its output was trained from the same config and data."""
        from distill.axolotl.train import losses, run_axolotl

        self.echo(f"  $ distill train {path}")
        log = self.out / "logs" / f"{path.stem}.log"
        config = yaml.safe_load(path.read_text())
        done = Path(config["output_dir"]) / "lab-trained.json"
        digest = hashlib.sha256(path.read_bytes() + _export_digest(path)).hexdigest()
        if done.exists() and json.loads(done.read_text()).get("config_sha256") == digest:
            self.echo(f"    reused: {done.parent} was trained from this config and data")
            return done.parent
        steps = losses(run_axolotl("train", path, log=log, cwd=ROOT))
        done.write_text(json.dumps({"config_sha256": digest, "losses": steps}) + "\n")
        for stale in ("runs", "scores"):  # an earlier evaluation of this model's folder is of other weights
            shutil.rmtree(self.out / "eval" / stale / done.parent.name, ignore_errors=True)
        self.echo(f"    loss {steps[0]:.3f} -> {steps[-1]:.3f} over {config.get('max_steps')} steps (log {log})"
                  if steps else f"    trained (log {log})")
        return done.parent

    def evaluate(self, held_out: Path, models: dict[str, str]) -> Path:
        e = self.cfg.evaluation
        self.stage(6, f"distill eval on {e.problems} held-out problems, {e.num_samples} samples each at "
                      f"temperature {e.temperature}: " + ", ".join(models))
        out = self.out / "eval"
        self.distill("eval", "--set", self.eval_set(held_out),
                     *(a for name, target in models.items() for a in ("--model", f"{name}={target}")),
                     "--samples", e.num_samples, "--temperature", e.temperature, "--max-new-tokens",
                     self.cfg.generation.max_new_tokens, "--train", self.out / "traces" / "filtered",
                     "--teacher-traces", "teacher", "--out", out)
        return out

    def eval_set(self, held_out: Path) -> Path:
        """The held-out problems as an eval set (what `distill eval --set` takes)."""
        eval_set = {"name": f"lab-{self.task.name}",
                    "description": f"Held-out {self.task.name} problems of the lab (never in the train split).",
                    "family": f"lab-{self.task.name}",
                    "source": {"path": str(held_out.resolve()), "problem_field": "question",
                               "answer_field": "answer"},
                    "prompt": {"system": self.task.system_prompt},
                    "verification": self.task.verification, "samples": self.cfg.evaluation.num_samples,
                    "temperature": self.cfg.evaluation.temperature,
                    "max_new_tokens": self.cfg.generation.max_new_tokens,
                    "in_distribution": {"specs": [f"lab-{self.cfg.name}"]}}
        if self.task.name == "dictation":  # free text: right when chrF >= 0.6 (as dictation-heldout); chrF, WER
            eval_set.update({"verification": "similarity", "similarity": {"metric": "chrf", "threshold": 0.6}})
        path = self.out / "eval-set.yaml"
        path.write_text(yaml.safe_dump(eval_set, sort_keys=False), encoding="utf-8")
        return path

    def onpolicy(self, base_url: str, trained: dict[str, Path], exports: dict[ExportKey, Path]) -> str:
        """`distill onpolicy` per arm and seed from the start variant's checkpoint; returns a markdown table."""
        o = self.cfg.onpolicy
        assert o is not None
        seeds = self.cfg.students.seeds
        self.stage(6, f"on-policy vs off-policy KD, {o.rounds} rounds of {o.passes:g} passes over fresh rows from "
                      f"the {o.start} student: " + ", ".join(o.arms))
        histories: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for seed in seeds:
            for arm, spec in o.arms.items():
                out = self.out / "onpolicy" / model_name(arm, seed, len(seeds))
                config = {"name": f"lab-{arm}-s{seed}", "student": str(trained[model_name(o.start, seed, len(seeds))]),
                          "teacher": {"base_url": base_url, "model": "lab-teacher"},
                          "prompts": str(self.out / "spec-filtered.yaml"), "rounds": o.rounds, "lmbda": spec.lmbda,
                          "offpolicy": str(exports[("kd", "filtered", False, self.cfg.generation.top_logprobs)]),
                          "seed": seed,
                          "sampling": {"backend": o.sampling, "prompts_per_round": o.prompts_per_round,
                                       "samples_per_prompt": o.samples_per_prompt,
                                       "temperature": 1.0, "max_new_tokens": self.cfg.generation.max_new_tokens,
                                       "max_model_len": 1024},
                          "training": {"cpu": True, "passes": o.passes, "max_steps": o.max_steps,
                                       "learning_rate": o.learning_rate,
                                       "kd_beta": o.kd_beta if spec.kd_beta is None else spec.kd_beta,
                                       "reverse_kl": spec.reverse_kl, "kd_alpha": spec.kd_alpha,
                                       "top_k": self.cfg.generation.top_logprobs,
                                       "max_seq_len": 512,
                                       # short rounds: no decay; a warmup for each round's fresh optimizer
                                       "overrides": {"micro_batch_size": self.cfg.students.micro_batch_size,
                                                     "lr_scheduler": "constant_with_warmup" if o.warmup_steps
                                                     else "constant", "warmup_steps": o.warmup_steps}},
                          "evaluation": {"set": str(self.out / "eval-set.yaml"),
                                         "samples": self.cfg.evaluation.num_samples, "every": o.eval_every,
                                         "batch_size": self.cfg.evaluation.batch_size,
                                         "temperature": self.cfg.evaluation.temperature},
                          "out": str(out)}
                path = self.out / "configs" / f"onpolicy-{arm}-s{seed}.yaml"
                path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
                self.distill("onpolicy", path)
                histories[(arm, seed)] = json.loads((out / "rounds.json").read_text())
        return onpolicy_table(histories, list(o.arms), seeds, self.out / "onpolicy" / "rounds.png")

    def random_control(self, traces: dict[str, Path]) -> Path:
        """``data: random``: as many verified traces as the PRM passed, drawn at random (the PRM's control)."""
        from lab.prm_stage import random_subset
        from pipelines.foreign import load_records

        size = sum(1 for r in load_records(traces["prm"]) if r.get("kept"))
        seed = self.cfg.students.random_subset_seed
        self.stage(3, f"the PRM's control: {size} verified traces drawn at random (seed {seed})")
        out = self.out / "traces" / "random"
        report = random_subset(traces["filtered"], size, seed, out)
        self.echo(f"    wrote {out}: {report['size']} of {report['verified']} verified traces")
        return out

    def derive(self, kind: str, filtered: Path, teacher: Path) -> Path:
        """``data: answer_only`` / ``shortest`` (lab/budget.py): a dataset folder derived from the verified traces;
        the thought's tokens are counted with the teacher's tokenizer (every student shares it)."""
        from lab.budget import answer_only, data_stats, shortest_argv

        out = self.out / "traces" / kind
        if kind == "shortest":
            self.stage(3, "the shortest verified trace per problem (distill select: no PRM score, every problem)")
            self.distill(*shortest_argv(filtered, out))
        else:
            from transformers import AutoTokenizer

            self.stage(3, "answer only: the verified traces with the <thought> block stripped")
            tokenizer = AutoTokenizer.from_pretrained(teacher)
            answer_only(filtered, out, lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]))
        stats = data_stats(out)
        self.echo(f"    wrote {out}: {stats['rows']} rows, {stats['mean_completion_tokens']} completion tokens "
                  "on average")
        return out

    def diagnostic_set(self, base_url: str, held_out: Path, student: Path) -> Path:
        """The teacher's traces on the first held-out problems (`distill run`, unverified), exported as KD rows
        the teacher scored (its top k at every position, on the student tokenizer's ids): the diagnostic's
        teacher-forced set, generated once."""
        d = self.cfg.diagnostic
        assert d is not None
        self.stage(4, f"diagnostic set: the teacher's traces on {d.problems} held-out problems, scored top-{d.top_k}")
        folder = self.out / "diagnostic"
        folder.mkdir(parents=True, exist_ok=True)
        source = folder / "problems.jsonl"
        source.write_text("".join(held_out.read_text(encoding="utf-8").splitlines(keepends=True)[:d.problems]),
                          encoding="utf-8")
        spec = self.spec(source, base_url, "unfiltered", path=folder / "spec.yaml", num_samples=d.num_samples)
        spec.write_text(spec.read_text(encoding="utf-8").replace(f"name: lab-{self.cfg.name}\n",
                                                                 f"name: lab-{self.cfg.name}-diagnostic\n", 1),
                        encoding="utf-8")
        self.distill("run", spec, "--out", folder / "traces")
        self.distill("export", folder / "traces", "--format", "kd", "--student", student, "--max-seq-len", 512,
                     "--file-format", "jsonl", "--teacher-url", base_url, "--teacher-model", "lab-teacher",
                     "--top-k", d.top_k, "--out", folder / "export")
        return folder / "export" / "train.jsonl"

    def diagnose(self, export_file: Path, teacher: Path, inits: dict[int, Path],
                 trained: dict[str, Path]) -> dict[str, dict[str, float]]:
        """lab/diagnostic.py on every model; returns per arm (and teacher, untrained) the mean over seeds."""
        from lab.diagnostic import diagnose

        d = self.cfg.diagnostic
        assert d is not None
        seeds = self.cfg.students.seeds
        models = {"teacher": teacher, **{model_name("untrained", s, len(seeds)): p for s, p in inits.items()},
                  **trained}
        self.stage(6, f"diagnostic: {len(models)} models teacher-forced on {export_file}")
        per_model = diagnose(models, export_file, d.top_k, self.out / "eval" / "diagnostic.json")
        arms: dict[str, dict[str, float]] = {"teacher": per_model["teacher"]}
        for arm in ["untrained", *(v.name for v in self.cfg.students.variants)]:
            rows = [per_model[model_name(arm, s, len(seeds))] for s in seeds]
            arms[arm] = {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]}
        return arms

    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        teacher = self.teacher()
        train, held_out = self.problem_files()
        variants = self.cfg.students.variants
        with self.served_teacher(teacher) as base_url:
            generated = {v.data for v in variants} - {"prm", "random", *DERIVED} \
                | ({"filtered"} if self.cfg.prm or {v.data for v in variants} & set(DERIVED) else set())
            traces = {data: self.generate(self.spec(train, base_url, data), data) for data in sorted(generated)}
            prm_summary = ""
            if self.cfg.prm:
                from lab.prm_stage import PrmStage

                traces["prm"], prm_summary = PrmStage(self, teacher).run(base_url, traces["filtered"])
            if any(v.data == "random" for v in variants):
                traces["random"] = self.random_control(traces)
            for kind in DERIVED:
                if any(v.data == kind for v in variants):
                    traces[kind] = self.derive(kind, traces["filtered"], teacher)
            inits = {seed: self.student_init(teacher, seed) for seed in self.cfg.students.seeds}
            exports = self.export(traces, next(iter(inits.values())), base_url)
            diagnostic_rows = self.diagnostic_set(base_url, held_out, next(iter(inits.values()))) \
                if self.cfg.diagnostic else None
            trained = self.train(exports, inits)
            batch = self.cfg.evaluation.batch_size
            local = ",backend=transformers" + (f",batch_size={batch}" if batch else "")
            models = {"teacher": base_url, **{model_name("untrained", seed, len(inits)): f"{path}{local}"
                                              for seed, path in inits.items()},
                      **{name: f"{path}{local}" for name, path in trained.items()}}
            results_dir = self.evaluate(held_out, models)
            onpolicy = self.onpolicy(base_url, trained, exports) if self.cfg.onpolicy else ""
        results = json.loads((results_dir / "results.json").read_text())
        diagnostics = self.diagnose(diagnostic_rows, teacher, inits, trained) if diagnostic_rows else None
        summary = summarize(results, self.cfg) + data_table(traces, self.cfg) \
            + self.comparison(results, results_dir, diagnostics) + prm_summary + onpolicy \
            + self.projection(results, results_dir)
        (results_dir / "lab-summary.md").write_text(summary, encoding="utf-8")
        self.stage(7, f"results: {results_dir}/report.md, plots in {results_dir}/plots, summary below")
        self.echo(summary)
        return results

    def projection(self, results: dict[str, Any], results_dir: Path) -> str:
        """With ``latency_projection``: each variant's tokens per answer as ms per clean-up on the seed's devices."""
        if not self.cfg.latency_projection:
            return ""
        from lab.projection import arm_points, projection_markdown

        points = arm_points(results, [v.name for v in self.cfg.students.variants], self.cfg.students.seeds)
        return projection_markdown(points, results_dir / "plots" / "budget-latency.png")

    def comparison(self, results: dict[str, Any], results_dir: Path,
                   diagnostics: dict[str, dict[str, float]] | None) -> str:
        """The paired comparison to the baseline variant (lab/compare.py), with 2 seeds or more."""
        from lab.compare import write_comparison

        s = self.cfg.students
        if len(s.seeds) < 2 or s.baseline not in {v.name for v in s.variants}:
            return ""
        pass1 = {v.name: {seed: value for seed in s.seeds
                          if (value := pass_at_1(results, model_name(v.name, seed, len(s.seeds)))) is not None}
                 for v in s.variants}
        return write_comparison({arm: values for arm, values in pass1.items() if values}, s.baseline, results_dir,
                                diagnostics)


def pass_at_1(results: dict[str, Any], model: str) -> float | None:
    """A model's held-out pass@1 in ``distill eval``'s results (the clean head when there is one)."""
    (set_name,) = results["sets"]
    run = results["runs"].get(model, {}).get(set_name)
    return None if run is None else (run["clean"] or run["all"]).get("pass@1")


def _export_digest(config: Path) -> bytes:
    """The bytes of the data files a config trains on (a re-export with other rows retrains)."""
    datasets = yaml.safe_load(config.read_text()).get("datasets") or []
    files = [Path(d["path"]) for d in datasets]
    return b"".join(hashlib.sha256(f.read_bytes()).digest() for f in files if f.is_file())


def summarize(results: dict[str, Any], cfg: LabConfig) -> str:
    """pass@1 per variant: the mean over seeds and their spread (sample standard deviation), with format
    adherence and the mean completion tokens per answer (every sample); chrF and WER where the set is scored by
    similarity; the teacher and the untrained student for reference."""
    import statistics

    (set_name,) = results["sets"]

    def metric(model: str, key: str) -> Any:
        run = results["runs"].get(model, {}).get(set_name)
        if run is None:
            return None
        head = run["clean"] or run["all"]
        value = head.get(key)
        return value.get("mean") if key == "tokens" and isinstance(value, dict) else value

    def mean(names: list[str], key: str, fmt: str) -> str:
        values = [v for v in (metric(n, key) for n in names) if v is not None]
        return format(statistics.mean(values), fmt) if values else "–"

    seeds = cfg.students.seeds
    labels = ["teacher", "untrained", *(v.name for v in cfg.students.variants)]
    similarity = any(metric(n, "chrf") is not None for n in results["runs"])
    rows = ["| model | pass@1 (mean over seeds) | spread (sd) | per seed | format | tokens/answer |"
            + (" chrF | WER |" if similarity else ""), "|---" * (8 if similarity else 6) + "|"]
    for label in labels:
        names = ["teacher"] if label == "teacher" else [model_name(label, s, len(seeds)) for s in seeds]
        values = [v for v in (metric(n, "pass@1") for n in names) if v is not None]
        if not values:
            continue
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(f"| {label} | {statistics.mean(values):.1%} | {sd:.1%} | "
                    + ", ".join(f"{v:.1%}" for v in values) + " | " + mean(names, "format_adherence", ".1%")
                    + " | " + mean(names, "tokens", ".1f") + " |"
                    + (f" {mean(names, 'chrf', '.3f')} | {mean(names, 'wer', '.3f')} |" if similarity else ""))
    return "\n".join(rows) + "\n"


def data_table(traces: dict[str, Path], cfg: LabConfig) -> str:
    """What each variant trained on: the kept rows of its data and their mean completion tokens (lab/budget.py);
    only when a variant trains on data derived from the verified traces (answer_only, shortest)."""
    from lab.budget import data_stats

    variants = cfg.students.variants
    if not any(v.data in DERIVED for v in variants):
        return ""
    stats = {data: data_stats(traces[data]) for data in dict.fromkeys(v.data for v in variants) if data in traces}
    rows = ["", "| variant | data | rows | mean completion tokens |", "|---|---|---|---|"]
    for v in variants:
        if v.data in stats:
            tokens = stats[v.data]["mean_completion_tokens"]
            rows.append(f"| {v.name} | {v.data} | {stats[v.data]['rows']} | "
                        + ("–" if tokens is None else f"{tokens:.1f}") + " |")
    return "\n".join(rows) + "\n"


def onpolicy_table(histories: dict[tuple[str, int], list[dict[str, Any]]], arms: list[str], seeds: list[int],
                   plot: Path, baseline: str | None = None) -> str:
    """pass@1 per evaluated round and arm (mean over seeds, sd), the teacher-scored targets summed over the rounds
    so far (the teacher budget), a plot, and the last round paired per seed against ``baseline`` (an arm; default
    the off-policy arm named ``offpolicy`` when there is one)."""
    import statistics

    from lab.compare import write_comparison

    rounds = max(len(h) for h in histories.values())
    lines = ["", "| round | " + " | ".join(f"{a} pass@1 (sd)" for a in arms) + " | "
             + " | ".join(f"{a} teacher-scored targets, cumulative" for a in arms) + " |",
             "|---" * (1 + 2 * len(arms)) + "|"]
    curves: dict[str, list[tuple[int, float]]] = {a: [] for a in arms}
    for r in range(rounds):
        cells, tokens, evaluated = [], [], False
        for arm in arms:
            runs = [histories[(arm, s)] for s in seeds if len(histories[(arm, s)]) > r]
            values = [h[r]["pass@1"] for h in runs if h[r].get("pass@1") is not None]
            if values:
                evaluated = True
                mean = statistics.mean(values)
                curves[arm].append((r, mean))
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{mean:.1%} ({sd:.1%})")
            else:
                cells.append("–")
            spent = [sum(h[i].get("teacher_scored_targets") or 0 for i in range(r + 1)) for h in runs]
            tokens.append(f"{round(statistics.mean(spent)):,}" if spent and r else "–")
        if evaluated:
            lines.append(f"| {r} | " + " | ".join(cells) + " | " + " | ".join(tokens) + " |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for arm, points in curves.items():
        ax.plot([r for r, _ in points], [100 * y for _, y in points], marker="o", label=arm)
    ax.set_xlabel("round")
    ax.set_ylabel("held-out pass@1 (%)")
    ax.set_xticks(range(rounds))
    ax.legend()
    fig.tight_layout()
    plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(plot, dpi=100)
    plt.close(fig)
    out = "\n".join(lines) + f"\n\n![on-policy vs off-policy]({plot})\n"
    baseline = baseline or ("offpolicy" if "offpolicy" in arms else None)
    last = {arm: {s: h[-1]["pass@1"] for s in seeds if (h := histories[(arm, s)]) and h[-1].get("pass@1") is not None}
            for arm in arms}
    if baseline in last and len(last[baseline]) >= 2:
        out += "\nThe last round, paired per seed (each seed's arms start from the same checkpoint):\n" + \
            write_comparison(last, baseline, plot.parent)
    return out


def _share(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


def _shape_args(shape: dict[str, int]) -> list[str]:
    return [a for k, v in shape.items() for a in ("--shape", f"{k}={v}")]
