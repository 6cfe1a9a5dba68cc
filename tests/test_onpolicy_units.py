"""`distill onpolicy`'s recipe without servers: no cross-entropy on the student's own samples (refused in one line
naming the key), the sampled-token estimate only on rows the student sampled, and the round's steps derived from
its rows (at most 2 passes: fresh samples). The end-to-end round is tests/test_onpolicy.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import run_distill

from distill.onpolicy.config import load_onpolicy_config
from distill.onpolicy.rounds import round_steps
from pipelines.spec import SpecError

RECIPE = Path(__file__).resolve().parents[1] / "distill" / "onpolicy" / "configs" / "qwen2.5-1.5b.yaml"


def write(tmp_path: Path, **extra: Any) -> Path:
    config = {"student": "out/student", "teacher": {"base_url": "http://127.0.0.1:8000/v1", "model": "teacher"},
              "prompts": "gsm8k", **extra}
    path = tmp_path / "onpolicy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_gpu_recipe_loads_with_reverse_kl_and_no_cross_entropy() -> None:
    cfg = load_onpolicy_config(RECIPE)
    t = cfg.training
    assert t.kd_alpha == 1.0 and t.kd_beta == 1.0 and t.passes <= 2 and t.max_steps is None
    assert cfg.rounds >= 8 and cfg.lmbda == 1.0


def test_defaults_are_the_recipe(tmp_path: Path) -> None:
    t = load_onpolicy_config(write(tmp_path)).training
    assert (t.kd_alpha, t.kd_beta, t.reverse_kl, t.passes) == (1.0, 1.0, "topk_tail", 1.0)


@pytest.mark.parametrize(("extra", "message"), [
    ({"training": {"kd_alpha": 0.9}},
     "training.kd_alpha: 0.9 puts a cross-entropy (weight 0.1) on the student's own samples"),
    ({"training": {"overrides": {"kd_ce_alpha": 0.1}}},
     "training.overrides.kd_ce_alpha: 0.1 puts a cross-entropy on the student's own samples"),
    ({"lmbda": 0.5, "offpolicy": "out/kd", "training": {"kd_alpha": 0.5}}, "training.kd_alpha: 0.5"),
    ({"training": {"overrides": {"max_steps": 200}}}, "training.overrides.max_steps: the steps are derived"),
    ({"training": {"passes": 32}}, "training.passes"),
    ({"training": {"reverse_kl": "sampled_token", "kd_beta": 0.0}},
     "training.reverse_kl: sampled_token is the reverse KL (kd_beta 1)"),
    ({"lmbda": 0.5, "offpolicy": "out/kd", "training": {"reverse_kl": "sampled_token"}},
     "training.reverse_kl: sampled_token with lmbda 0.5: the off-policy rows are the teacher's samples"),
])
def test_refused_in_one_line_naming_the_key(tmp_path: Path, extra: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as error:
        load_onpolicy_config(write(tmp_path, **extra))
    text = str(error.value)
    assert text.startswith("onpolicy.yaml: ") and message in text and "\n" not in text


def test_cross_entropy_is_allowed_on_the_teachers_rows_alone(tmp_path: Path) -> None:
    """lmbda 0 (the off-policy baseline arm) trains on the teacher's traces: a cross-entropy there is SFT."""
    cfg = load_onpolicy_config(write(tmp_path, lmbda=0.0, offpolicy="out/kd", training={"kd_alpha": 0.9}))
    assert cfg.training.kd_alpha == 0.9


def test_the_cli_refusal_is_one_line(tmp_path: Path) -> None:
    result = run_distill("onpolicy", write(tmp_path), "--set", "training.kd_alpha=0.9", check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: onpolicy.yaml: training.kd_alpha: 0.9 puts a cross-entropy")


def test_round_steps_are_passes_over_the_rows() -> None:
    assert round_steps(200, 2.0, 32, 1) == 13  # the lab: 100 prompts x 2 samples, batch 32
    assert round_steps(4000, 1.0, 2, 8) == 250  # the GPU recipe: 2000 prompts x 2, batch 16
    assert round_steps(3, 1.0, 32, 1) == 1 and round_steps(4000, 2.0, 2, 8, cap=100) == 100
