"""`distill onpolicy` end to end on tiny models: the student (here the teacher itself, so the answer is known) is
served by the real vLLM and samples, the real vLLM teacher scores its exact tokens (the top k and the sampled
token's own log-probability), the real Axolotl trains the sampled-token reverse KL with no cross-entropy on the
student's tokens; a SIGTERM in the middle of a round and a rerun resume it without sampling again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import DISTILL, ROOT, Served, lab_spec, require_venv, run_distill, wait_for
from test_axolotl_train import prepared_rows
from test_vllm_teacher import check_targets_against_forward_pass

from distill.axolotl.kd_plugin.rules import SAMPLED_TOKEN_MASK

pytestmark = [pytest.mark.vllm, pytest.mark.train, pytest.mark.slow]


def onpolicy_config(tmp_path: Path, teacher: Served, **extra: object) -> Path:
    prompts = lab_spec(tmp_path / "prompts.yaml", teacher, n_problems=24, seed=11)
    eval_set = {"name": "sums", "family": "lab-addition", "verification": "math", "samples": 2,
                "max_new_tokens": 64, "source": {"path": str(prompts.parent / "prompts-problems.jsonl"),
                                                 "problem_field": "question", "answer_field": "answer"},
                "prompt": yaml.safe_load(prompts.read_text())["prompt"]}
    (tmp_path / "sums.yaml").write_text(yaml.safe_dump(eval_set))
    config = {"name": "tiny-onpolicy", "student": str(teacher.model_dir),
              "teacher": {"base_url": teacher.base_url, "model": teacher.name}, "prompts": str(prompts),
              "rounds": 1,
              "sampling": {"prompts_per_round": 12, "samples_per_prompt": 2, "temperature": 1.0,
                           "max_new_tokens": 64, "max_model_len": 1024},
              # the teacher as its own student with the learning rate at 0: the KD loss must be ≈ 0; the
              # sampled-token reverse KL (the plugin's reverse_sampled), one pass over the round's rows (batch 8)
              "training": {"cpu": True, "passes": 1.0, "learning_rate": 0.0, "top_k": 5, "max_seq_len": 512,
                           "reverse_kl": "sampled_token", "overrides": {"micro_batch_size": 8}},
              "evaluation": {"set": str(tmp_path / "sums.yaml"), "samples": 2, "limit": 8},
              "out": str(tmp_path / "out"), **extra}
    path = tmp_path / "onpolicy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def student_servers() -> list[str]:
    """Command lines of live processes serving this test's student."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "tiny-onpolicy-student" in text and "api_server" in text:
            found.append(text)
    return found


def test_a_round_end_to_end_resumes_after_sigterm(vllm_teacher: Served, tmp_path: Path) -> None:
    require_venv(".venv-train", "setup-train")
    config = onpolicy_config(tmp_path, vllm_teacher)
    round_dir = tmp_path / "out" / "round-1"
    run = subprocess.Popen([*DISTILL, "onpolicy", str(config)], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    # stop it once the student's server is up and its sampling sub-job starts (the sub-job's effective spec is
    # written just before the child starts; its imports alone take seconds, so the round cannot be done). Waiting
    # for the first part file instead raced: the 12 prompts' parts land in one burst, and on a loaded CI machine
    # the sampling had finished before the signal arrived.
    try:
        wait_for(lambda: (round_dir / "samples.yaml").exists(), 300, "the student's sampling sub-job")
        os.kill(run.pid, signal.SIGTERM)
        output, _ = run.communicate(timeout=180)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode != 0 and "interrupted; rerun the same command to resume" in output, output[-2000:]
    assert not (round_dir / "samples" / "__meta__" / "stats.json").exists()
    assert not student_servers(), "the student's vLLM server outlived the stopped run"

    result = run_distill("onpolicy", config, timeout=1200)
    history = json.loads((tmp_path / "out" / "rounds.json").read_text())
    assert [h["round"] for h in history] == [0, 1] and "pass@1" in result.stdout
    stats = json.loads((round_dir / "samples" / "__meta__" / "stats.json").read_text())
    assert stats["samples"] == 24 and history[1]["student_samples"] == 24 and history[1]["student_tokens"] > 0
    # the teacher scored the student's exact tokens: every target, and the teacher's log-probability of every
    # sampled token (`target_token_logprob`), equals a forward pass of the teacher
    counts = check_targets_against_forward_pass(round_dir / "kd", vllm_teacher.model_dir)
    print(f"sampled tokens scored: {counts}")
    assert counts["rows"] >= 12 and history[1]["teacher_scored_targets"] > 0
    # every scored position has it, also where the student's token is outside the teacher's top 5 (sampled at
    # T = 1; how often depends on the tiny teacher's tail, so it is printed, not asserted)
    assert counts["token_logprobs"] == counts["positions"] > 100
    manifest = json.loads((round_dir / "kd" / "export.json").read_text())
    assert manifest["kd"]["target_token_logprob"] == manifest["rows"]

    # the round's config: the KD loss alone, the sampled-token reverse KL, steps from the rows (one pass, batch 8)
    rendered = yaml.safe_load((round_dir / "kd.yaml").read_text())
    assert rendered["base_model"] == str(vllm_teacher.model_dir) and rendered["kd_divergence"] == "reverse_sampled"
    assert rendered["kd_ce_alpha"] == 0.0 and rendered["kd_alpha"] == 1.0
    steps = -(-manifest["rows"] // 8)
    assert rendered["max_steps"] == history[1]["train_steps"] == steps
    # Axolotl's prepared rows carry the sampled token (mask 2) after the top 5, on the tokens that follow
    rows = prepared_rows(round_dir / "kd.yaml")
    marked = trained_positions = 0
    for row in rows:
        for p, mask in enumerate(row["target_mask"]):
            assert mask[:5] == [mask[0]] * 5 and mask[5] in (0, SAMPLED_TOKEN_MASK)
            trained_positions += mask[0] == 1 and p + 1 < len(row["input_ids"])
            if mask[5] == SAMPLED_TOKEN_MASK:
                assert mask[0] == 1 and row["target_token_ids"][p][5] == row["input_ids"][p + 1]
                marked += 1
    assert len(rows) == manifest["rows"] and marked == trained_positions > 100, (marked, trained_positions)

    # the trainer: the loss ≈ 0 (teacher as its own student), its cross-entropy term logged and exactly 0
    trained = json.loads((round_dir / "model" / "onpolicy-trained.json").read_text())
    print(f"on-policy loss, teacher as its own student: {trained}")
    assert len(trained["losses"]) == steps and all(abs(v) < 1e-3 for v in trained["losses"])
    assert len(trained["ce_term"]) == steps and all(v == 0.0 for v in trained["ce_term"])
    assert len(trained["kd_term"]) == steps and all(abs(v) < 1e-3 for v in trained["kd_term"])
    assert 0.0 <= history[1]["pass@1"] <= 1.0 and (tmp_path / "out" / "rounds.png").exists()


def test_bad_config_is_one_line(vllm_teacher: Served, tmp_path: Path) -> None:
    config = onpolicy_config(tmp_path, vllm_teacher, lmbda=0.5)
    result = run_distill("onpolicy", config, check=False)
    assert result.returncode == 2 and result.stderr.strip().startswith("error: onpolicy.yaml: offpolicy: lmbda 0.5")
    result = run_distill("onpolicy", config, "--set", "rounds=0", check=False)
    assert result.returncode == 2 and "rounds: Input should be greater than or equal to 1" in result.stderr
    # a cross-entropy on the student's own samples is refused before anything starts
    config = onpolicy_config(tmp_path, vllm_teacher)
    result = run_distill("onpolicy", config, "--set", "training.kd_alpha=0.9", check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: onpolicy.yaml: training.kd_alpha: 0.9 puts a cross-entropy")
    assert not (tmp_path / "out").exists()
