"""`distill config kd` → real `axolotl train` with the factory's KD plugin (distill/axolotl/kd_plugin).

A tiny random teacher whose logits are sharpened (its top 4 hold 10-30 % of the mass, so the tail bucket
matters), scored in-process by `distill export --format kd --teacher-model`; a student from another random init
with the same tokenizer. Every divergence must train (the loss falls over 30 steps); the teacher as its own
student must give ≈ 0 with Axolotl's prepared targets left raw; and Axolotl itself refuses a hand-edited config
that renormalises the top k. Marked `train`: skipped without .venv-train, except in CI where it must run.
"""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import require_venv, run_distill
from test_axolotl_train import prepared_rows
from test_export_units import _dataset

from distill.axolotl.kd_plugin.rules import DATASET_TYPE, PLUGIN
from distill.axolotl.train import losses, run_axolotl
from pipelines.spec import SpecError

pytestmark = [pytest.mark.train, pytest.mark.slow]
TOP_K = 4


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(teacher, student, dataset folder): two random inits of the tiny Qwen2 sharing one tokenizer."""
    require_venv(".venv-train", "setup-train")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from testing.tiny_model import build_tiny_model

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("kd-plugin")
    teacher = build_tiny_model(tmp / "teacher", seed=0)
    model = AutoModelForCausalLM.from_pretrained(teacher)
    with torch.no_grad():
        model.model.norm.weight.mul_(4.0)  # logits x4: a peaked teacher (a random init is near uniform)
    model.save_pretrained(teacher)
    student = build_tiny_model(tmp / "student", seed=1)
    return teacher, student, _dataset(tmp / "traces", AutoTokenizer.from_pretrained(teacher), with_logprobs=False)


def export(models: tuple[Path, Path, Path], student: Path, out: Path) -> Path:
    teacher, _, traces = models
    run_distill("export", traces, "--format", "kd", "--student", student, "--teacher-model", teacher,
                "--top-k", TOP_K, "--out", out)
    return out


def config(export_dir: Path, student: Path, tmp: Path, *args: str) -> Path:
    out = tmp / "kd.yaml"
    run_distill("config", "kd", "--dataset", export_dir, "--student", student, "--out", out, "--output-dir",
                tmp / "model", "--prepared-dir", tmp / "prepared", "--smoke", "--set", "kd_alpha=1.0",
                "--set", "kd_ce_alpha=0.0", *args)
    return out


@pytest.mark.parametrize("loss", ["forward", "reverse", "jsd"])
def test_each_divergence_trains_with_the_plugin(tmp_path: Path, models: tuple[Path, Path, Path], loss: str) -> None:
    _, student, _ = models
    path = config(export(models, student, tmp_path / "export"), student, tmp_path, "--loss", loss,
                  "--set", "max_steps=30")
    rendered = yaml.safe_load(path.read_text())
    assert rendered["plugins"] == [PLUGIN] and rendered["kd_divergence"] == loss
    assert rendered.get("kd_jsd_beta") == (0.5 if loss == "jsd" else None)
    entry = rendered["datasets"][0]
    assert entry["type"] == DATASET_TYPE and entry["temperature"] == 1.0 and not rendered["kd_normalize_topk"]
    output = run_axolotl("train", path, log=tmp_path / "train.log", cwd=tmp_path)
    assert f"Plugin loaded successfully: {PLUGIN}" in output
    steps = losses(output)
    print(f"{loss}: {steps[0]:.4f} -> {steps[-1]:.4f} over {len(steps)} steps")
    assert len(steps) == 30 and all(math.isfinite(v) and v >= 0 for v in steps)
    assert steps[-1] < 0.5 * steps[0] and sum(steps[-5:]) < sum(steps[:5])


def test_teacher_as_its_own_student_is_zero_with_raw_targets(tmp_path: Path, models: tuple[Path, Path, Path]) -> None:
    teacher, _, _ = models
    export_dir = export(models, teacher, tmp_path / "export")
    path = config(export_dir, teacher, tmp_path, "--loss", "jsd", "--beta", "0.3", "--set", "max_steps=2",
                  "--set", "learning_rate=0.0")
    steps = losses(run_axolotl("train", path, log=tmp_path / "train.log", cwd=tmp_path))
    print(f"teacher as its own student, JSD(0.3): {steps}")
    assert len(steps) == 2 and all(abs(v) < 1e-3 for v in steps)
    # the prepared targets are the export's raw log-probabilities (Axolotl's own KD type renormalises them)
    exported = pq.read_table(export_dir / "train.parquet").to_pylist()
    rows = prepared_rows(path)
    assert len(rows) == len(exported)
    checked = 0
    for row in rows:
        mask, logprobs = row["target_mask"], row["target_logprobs"]
        on = [p for p in range(len(mask)) if mask[p][0]]
        # target p is over token p + 1: trained exactly where the token it predicts is, the answer's first token
        # included (Axolotl's own type masks by label p: it drops that target and trains one past the end)
        assert [p + 1 for p in on] == [p for p, label in enumerate(row["labels"]) if label != -100]
        assert on and all(sum(math.exp(v) for v in logprobs[p]) < 0.99 for p in on)  # a tail is left
        checked += len(on)
    assert checked > 20
    first = exported[0]["logprobs"]  # right-aligned: the export's last list is the row's last target
    assert any(all(abs(a - b) < 1e-6 for a, b in zip(first[-1], r["target_logprobs"][-1], strict=True))
               for r in rows)


def test_axolotl_refuses_a_renormalised_top_k_through_the_plugin(tmp_path: Path,
                                                                 models: tuple[Path, Path, Path]) -> None:
    """A hand-edited config (not through `distill config`) is refused by the plugin when Axolotl loads it."""
    _, student, _ = models
    path = config(export(models, student, tmp_path / "export"), student, tmp_path)
    path.write_text(path.read_text().replace("kd_normalize_topk: false", "kd_normalize_topk: true"))
    with pytest.raises(SpecError, match="kd_normalize_topk: true renormalises the student"):
        run_axolotl("preprocess", path, log=tmp_path / "preprocess.log", cwd=tmp_path)
