"""The on-device lab: fp32 vs post-training-quantized (PTQ) vs quantization-aware-distilled (QAD) dictation students.

The lab loop's stages (lab/loop.py) train a dictation teacher, serve it, generate and export traces, and train the
config's variants with Axolotl (a ``qat: true`` variant renders its config with ``distill config --qat``). Then,
per student, ``distill export-model --quantize int4`` (int8 dynamic activations + int4 weights: the QAT scheme),
``distill eval`` of each model in-process on the held-out problems with chrF/WER (``similarity``), and
bench/latency.py for ms per clean-up and tokens/s. Every step is a `distill` command a user would type.

    .venv/bin/python -m lab.ondevice ondevice            # lab/configs/ondevice.yaml → out/lab/ondevice
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import yaml

from lab.config import load_lab_config, model_name
from lab.loop import Loop


class OnDeviceLoop(Loop):
    def stage(self, number: int, what: str) -> None:
        self.echo(f"[{number}/8] {what}  (+{time.monotonic() - self.started:.0f}s)")

    def eval_set(self, held_out: Path) -> Path:
        """The held-out clean-ups scored by chrF (right when ≥ 0.6, as dictation-heldout), chrF and WER reported."""
        path = super().eval_set(held_out)
        data = yaml.safe_load(path.read_text())
        data.update({"verification": "similarity", "similarity": {"metric": "chrf", "threshold": 0.6}})
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path

    def quantize(self, trained: dict[str, Path]) -> dict[str, Path]:
        self.stage(6, "distill export-model --quantize int4 (+ GGUF Q8_0) for every student")
        out = {}
        for name, path in trained.items():
            target = self.out / "device" / f"{name}-int4"
            self.distill("export-model", path, "--quantize", "int4", "--gguf", "--out", target)
            out[name] = target
        return out

    def evaluate_each(self, held_out: Path, models: dict[str, Path]) -> dict[str, dict[str, Any]]:
        """One `distill eval` per model (in-process transformers backend, which loads torchao folders)."""
        e = self.cfg.evaluation
        eval_set = self.eval_set(held_out)
        results = {}
        for name, path in models.items():
            self.stage(7, f"distill eval {name} on {e.problems} held-out clean-ups ({e.num_samples} samples)")
            out = self.out / "eval" / name
            self.distill("eval", "--set", eval_set, "--model", f"{name}={path},backend=transformers", "--samples",
                         e.num_samples, "--temperature", e.temperature, "--max-new-tokens",
                         self.cfg.generation.max_new_tokens, "--out", out)
            results[name] = json.loads((out / "results.json").read_text())
        return results

    def latency(self, models: dict[str, Path]) -> str:
        self.stage(8, "ms per clean-up and tokens/s (lab/latency.py, as bench/latency.py), ratios against fp32")
        from lab.latency import latency_table

        return latency_table(list(models.items()), prompts=20)

    def run(self) -> dict[str, Any]:  # type: ignore[override]
        self.out.mkdir(parents=True, exist_ok=True)
        teacher = self.teacher()
        train, held_out = self.problem_files()
        with self.served_teacher(teacher) as base_url:
            traces = {data: self.generate(self.spec(train, base_url, data), data)
                      for data in sorted({v.data for v in self.cfg.students.variants})}
            inits = {seed: self.student_init(teacher, seed) for seed in self.cfg.students.seeds}
            exports = self.export(traces, next(iter(inits.values())), base_url)
        trained = self.train(exports, inits)
        quantized = self.quantize(trained)
        seeds = len(self.cfg.students.seeds)
        seed = self.cfg.students.seeds[0]
        fp32, qad = trained[model_name("kd", seed, seeds)], trained[model_name("kd-qat", seed, seeds)]
        models = {"teacher": teacher, "kd-fp32": fp32, "kd-ptq-int4": quantized[model_name("kd", seed, seeds)],
                  "kd-qat-fp32": qad, "kd-qad-int4": quantized[model_name("kd-qat", seed, seeds)]}
        results = self.evaluate_each(held_out, models)
        bench = self.latency({k: v for k, v in models.items() if k != "teacher"})
        summary = summarize(results, bench)
        (self.out / "ondevice-summary.md").write_text(summary, encoding="utf-8")
        self.echo(summary)
        return results


def summarize(results: dict[str, dict[str, Any]], bench: str) -> str:
    lines = ["| model | pass@1 (chrF ≥ 0.6) | chrF | WER |", "|---|---|---|---|"]
    for name, result in results.items():
        values = [_find(result.get("runs", {}), k) for k in ("pass@1", "chrf", "wer")]
        lines.append(f"| {name} | " + " | ".join("n/a" if v is None else f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines) + "\n\n```\n" + bench + "\n```\n"


def _find(node: Any, key: str) -> float | None:
    """The first numeric value under ``key`` anywhere in results.json (its layout is the eval's)."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key and isinstance(v, (int, float)):
                return float(v)
        for v in node.values():
            found = _find(v, key)
            if found is not None:
                return found
    if isinstance(node, list):
        for v in node:
            found = _find(v, key)
            if found is not None:
                return found
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="ondevice")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    cfg = load_lab_config(args.config)
    OnDeviceLoop(cfg, args.out or Path("out/lab") / cfg.name).run()


if __name__ == "__main__":
    main()
