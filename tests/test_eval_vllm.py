"""`distill eval` of the tiny lab teacher on the real vLLM server (CPU build): a local model folder the eval serves
itself, a URL served by `distill serve` (the session's `vllm_teacher`), and the same model in-process, side by side.

The model-folder test comes first: it starts and stops its own server before the session server exists, so that
one vLLM server runs at a time when this file runs alone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import Served, require_venv, run_distill

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PROTOCOL = ["--set", "lab-addition", "--limit", "12", "--samples", "4", "--max-new-tokens", "64"]


def _check_lab_run(results: dict, model: str) -> dict:
    run = results["runs"][model]["lab-addition"]["all"]
    assert run["problems"] == 12 and run["samples"] == 48 and run["errors"] == 0
    # the lab teacher writes the format (300 CPU steps); its sums are right often, not always
    assert run["format_adherence"] > 0.8 and 0.0 < run["pass@1"] <= 1.0, run
    curve = [run["pass@k"][str(k)] for k in range(1, 5)]
    assert curve == sorted(curve) and curve[0] == pytest.approx(run["pass@1"])
    assert 0.0 <= run["calibration"]["ece"] <= 1.0 and sum(b["count"] for b in run["calibration"]["bins"]) == 48
    assert run["tokens"]["known"] == 48 and 20 < run["tokens"]["mean"] <= 64
    return run


def test_eval_serves_a_model_folder_itself(lab_teacher: Path, tmp_path: Path) -> None:
    require_venv(".venv-vllm", "setup-vllm")
    from distill.serve.server import port_free

    out = tmp_path / "eval"
    result = run_distill("eval", *PROTOCOL, "--model", f"teacher={lab_teacher}", "--out", out,  # the lab demo form
                         timeout=600)
    results = json.loads((out / "results.json").read_text())
    run = _check_lab_run(results, "teacher")
    assert "calibration_logprob" in run  # served: vLLM returned the sampled tokens' log-probabilities
    logs = list((out / "serve").glob("teacher-*.log"))
    assert len(logs) == 1 and "teacher: pass@1 lab-addition" in result.stdout
    port = int(re.search(r"-(\d+)\.log$", logs[0].name).group(1))
    assert port_free("127.0.0.1", port)  # the server the eval started is gone
    rows = pd.read_parquet(out / "runs" / "teacher" / "lab-addition")
    assert rows.teacher_model.eq("teacher").all() and (rows.completion_tokens == rows.tokens.map(len)).all()


def test_eval_teacher_url_and_in_process_student(vllm_teacher: Served, lab_teacher: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    run_distill("eval", *PROTOCOL, "--model", f"teacher={vllm_teacher.base_url}",
                "--model", f"local={lab_teacher},backend=transformers", "--teacher-traces", "teacher",
                "--out", out, timeout=600)
    results = json.loads((out / "results.json").read_text())
    served, local = _check_lab_run(results, "teacher"), _check_lab_run(results, "local")
    assert "calibration_logprob" in served and "calibration_logprob" not in local  # logprobs auto: served only
    # the same model in-process writes the same kind of column-by-column chain as over HTTP
    assert local["chain_rouge_l"] > 0.6 and local["chain_samples"] >= 40 and served["chain_rouge_l"] is None
    for model in ("teacher", "local"):
        rows = pd.read_parquet(out / "runs" / model / "lab-addition")
        scores = pd.read_parquet(out / "scores" / model / "lab-addition.parquet")
        merged = rows.merge(scores, on=["problem_id", "sample_index"], suffixes=("_run", ""))
        assert len(merged) == 48
        # what the factory keeps (parsed, verified) is right for the eval too; the eval may also credit answers
        # given without a thought block
        assert merged[merged.kept].correct.all() and merged.correct.sum() >= merged.kept.sum()
    report = (out / "report.md").read_text()
    assert re.search(r"\| lab-addition \| unlabelled \| \d+\.\d ± \d+\.\d \| \d+\.\d ± \d+\.\d \|", report)
    assert all((out / "plots" / f"{kind}-lab-addition.png").is_file() for kind in ("passk", "reliability", "tokens"))
