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


def off_policy_export(tmp_path: Path, student: Path, rows: int) -> Path:
    """A KD export folder of ``rows`` teacher rows, made (by its manifest) with the student's tokenizer."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from distill.axolotl.export import MANIFEST, tokenizer_sha256
    from distill.axolotl.shared_tokenizer import load_tokenizer

    out = tmp_path / "offpolicy"
    out.mkdir()
    table = pa.Table.from_pylist([{"input_ids": [i], "target_token_ids": [[i]]} for i in range(rows)])
    pq.write_table(table, out / "train.parquet")
    manifest = {"format": "kd", "rows": rows, "files": [{"stage": "train", "path": "train.parquet", "rows": rows}],
                "kd": {"distribution": {"tokenizer_sha256": tokenizer_sha256(load_tokenizer(str(student)))}}}
    (out / MANIFEST).write_text(json.dumps(manifest))
    return out


def test_the_off_policy_arm_draws_a_rounds_budget_of_fresh_rows(tmp_path: Path, tiny_model_dir: Path) -> None:
    """lmbda 0: each round takes N rows (the on-policy round's, an equal teacher budget) from one seeded order,
    so rounds see new rows until the pool is spent, then wrap around; not the whole pool every round."""
    import pyarrow.parquet as pq

    from distill.onpolicy.rounds import mix_offpolicy

    pool = off_policy_export(tmp_path, tiny_model_dir, 50)

    def draw(r: int, seed: int = 3) -> list[int]:
        out = tmp_path / f"round-{r}-{seed}"
        mix = mix_offpolicy(None, pool, 0.0, out, seed, str(tiny_model_dir), rows_per_round=20, round_index=r)
        assert mix["rows"] == 20 and mix["mix"]["offpolicy_rows"] == 20 and mix["mix"]["onpolicy_rows"] == 0
        return [ids[0] for ids in pq.read_table(out / "train.parquet").column("input_ids").to_pylist()]

    first, second, third = draw(1), draw(2), draw(3)
    assert len(set(first)) == 20 and not set(first) & set(second)  # round 2: 20 rows round 1 did not see
    assert len(set(first) | set(second)) == 40 and set(third) >= set(range(50)) - set(first) - set(second)
    assert draw(1) == first and draw(1, seed=4) != first  # one seeded order, the same on a rerun
    everything = mix_offpolicy(None, pool, 0.0, tmp_path / "all", 3, str(tiny_model_dir))
    assert everything["rows"] == 50  # without a per-round budget: the pool


def test_a_round_samples_in_process_without_a_server(tmp_path: Path) -> None:
    """sampling.backend transformers: the round's spec names the checkpoint, seeded per round, and no URL."""
    from distill.onpolicy.rounds import round_spec
    from pipelines.spec import load_spec

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"question": "1+1", "answer": "2"}\n')
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({"name": "sums", "source": {"path": str(prompts), "problem_field": "question",
                                                                     "answer_field": "answer"}}))
    cfg = load_onpolicy_config(write(tmp_path, prompts=str(spec_path), seed=5,
                                     sampling={"backend": "transformers"}))
    base, _ = load_spec(str(spec_path))
    local = round_spec(base, cfg, 2, prompts, None, "out/round-1/model").teacher
    assert (local.backend, local.model, local.seed) == ("transformers", "out/round-1/model", 7)
    served = round_spec(base, cfg, 2, prompts, "http://127.0.0.1:9/v1", "student-2").teacher
    assert (served.backend, served.model, served.seed) == ("openai", "student-2", None)


def test_evaluation_every_n_rounds_keeps_round_0_and_the_last(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import distill.eval.evaluate as evaluate_module
    from distill.onpolicy.rounds import Rounds

    cfg = load_onpolicy_config(write(tmp_path, rounds=6, evaluation={"set": "gsm8k", "every": 4}))
    rounds = Rounds.__new__(Rounds)  # no spec to load: only evaluate() is called
    rounds.cfg, rounds.cpu, rounds.echo = cfg, True, print
    evaluated: list[str] = []

    def fake_evaluate(eval_cfg: Any) -> dict[str, Any]:
        name = eval_cfg.models[0].name
        evaluated.append(name)
        return {"runs": {name: {"sums": {"clean": None, "all": {"pass@1": 0.5, "pass@1_se": 0.1}}}}}

    monkeypatch.setattr(evaluate_module, "evaluate", fake_evaluate)
    results = [rounds.evaluate(r, "ckpt") for r in range(7)]
    assert evaluated == ["round-0", "round-4", "round-6"]
    assert [r is not None for r in results] == [True, False, False, False, True, False, True]


def test_a_round_drawn_from_other_weights_samples_again(tmp_path: Path) -> None:
    """Round r samples from round r-1's checkpoint; resumed after that checkpoint was retrained (another learning
    rate), its samples, KD targets and mixed rows are dropped, not trained on; from the same weights they stay."""
    import os

    from distill.onpolicy.rounds import SAMPLED_FROM, drop_stale_round

    checkpoint = tmp_path / "round-1" / "model"
    checkpoint.mkdir(parents=True)
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(b"old weights")
    folder = tmp_path / "round-2"
    said: list[str] = []
    folder.mkdir()
    drop_stale_round(folder, str(checkpoint), said.append)  # a new round: nothing to drop, the weights recorded
    for name in ("samples", "kd", "data"):
        (folder / name).mkdir()
        (folder / name / "part").write_text("x")
    drop_stale_round(folder, str(checkpoint), said.append)  # resumed, same weights: kept
    assert all((folder / name / "part").exists() for name in ("samples", "kd", "data")) and not said
    weights.write_bytes(b"new weights, retrained")
    os.utime(weights, ns=(1, 1))
    drop_stale_round(folder, str(checkpoint), said.append)
    assert not any((folder / name).exists() for name in ("samples", "kd", "data"))
    assert said == [f"  round-2: its samples came from other weights than {checkpoint}; sampling again"]
    assert (folder / SAMPLED_FROM).exists()
    (folder / "samples").mkdir()
    (folder / SAMPLED_FROM).unlink()  # samples of unknown weights (a run from before the record): dropped
    drop_stale_round(folder, str(checkpoint), said.append)
    assert not (folder / "samples").exists()
