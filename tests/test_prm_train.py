"""PRM training end to end: labels.jsonl → `distill config prm` → real Axolotl (`distill train`) → a token
classifier that `distill prm-eval`, `distill prm-score` and a spec's `prm:` section score with `style: stepwise`.

The labelled set is learnable by a 2-layer model from scratch in a few dozen steps: a wrong step's result (7-9)
is never the sum of two numbers from 1-3, and, as in Math-Shepherd labels, every step after a wrong one is wrong
too. What the content assertions check is that the scorer reads the model where Axolotl trained it: the ids and
label positions equal Axolotl's own tokenization (its prepared dataset and its strategy on nasty rows), and the
trained PRM scores held-out right steps high and wrong ones low.
Marked `train`: skipped without .venv-train, except in CI where it must run.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from conftest import ROOT, require_venv, run_distill, served, write_jsonl, write_spec

from prm.encode import encode_stepwise
from testing.loopback.teacher import LoopbackTeacher

pytestmark = [pytest.mark.train, pytest.mark.slow]

TRAIN_PYTHON = ROOT / ".venv-train" / "bin" / "python"
TRAIN_ENV = {"AXOLOTL_DO_NOT_TRACK": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
             "TOKENIZERS_PARALLELISM": "false"}


def labelled_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """prm-label rows for "What is a + b, then c + d?": each step right, or wrong with a result of 7-9."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b, c, d = (rng.randint(1, 3) for _ in range(4))
        wrong = [rng.random() < 0.35, rng.random() < 0.35]
        results = [rng.randint(7, 9) if wrong[0] else a + b, rng.randint(7, 9) if wrong[1] else c + d]
        labels = [not wrong[0], not any(wrong)]  # after a wrong step no continuation reaches the gold
        rows.append({"id": f"s{seed}-{i}", "prompt": f"What is {a} + {b}, then {c} + {d}?",
                     "completions": [f"{a} + {b} = {results[0]}.", f"{c} + {d} = {results[1]}."],
                     "labels": labels, "soft_labels": [float(v) for v in labels], "gold": str(c + d)})
    return rows


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_venv(".venv-train", "setup-train")
    return tmp_path_factory.mktemp("prm-train")


@pytest.fixture(scope="module")
def base_model(workdir: Path) -> Path:
    """A random tiny Qwen2 causal LM (head_dim 64): Axolotl puts the 2-way token head on it, as on Qwen2.5-Math."""
    from testing.tiny_prm import build_tiny_prm

    return build_tiny_prm(workdir / "base", shape="tiny-vllm", causal_lm=True)


@pytest.fixture(scope="module")
def labels(workdir: Path) -> Path:
    (workdir / "labels").mkdir()
    write_jsonl(workdir / "heldout.jsonl", labelled_rows(40, seed=1))
    return write_jsonl(workdir / "labels" / "labels.jsonl", labelled_rows(300, seed=0))


@pytest.fixture(scope="module")
def trained(workdir: Path, base_model: Path, labels: Path) -> dict[str, Any]:
    """`distill config prm --smoke` (+ 60 steps) and `distill train`, the real Axolotl in .venv-train."""
    config = workdir / "prm.yaml"
    result = run_distill("config", "prm", "--data", labels, "--student", base_model, "--out", config,
                         "--output-dir", workdir / "model", "--prepared-dir", workdir / "prepared", "--smoke",
                         "--set", "max_steps=60", "--set", "micro_batch_size=8", "--set", "learning_rate=1e-3")
    assert f"wrote {config}" in result.stdout and "hard labels" in result.stdout
    output = run_distill("train", config, timeout=900, env=TRAIN_ENV)
    losses = [float(v) for v in re.findall(r"'loss': '?([-+0-9.eEinfa]+)'?", output.stdout + output.stderr)]
    return {"config": config, "model": workdir / "model", "losses": losses}


def prepared_rows(config: Path) -> list[dict[str, Any]]:
    """The tokenised rows Axolotl saved (read in .venv-train, whose datasets wrote them)."""
    prepared = Path(yaml.safe_load(config.read_text())["dataset_prepared_path"])
    script = ("import json, sys, glob, datasets\n"
              "path = sorted(glob.glob(sys.argv[1] + '/*/dataset_info.json'))[0].rsplit('/', 1)[0]\n"
              "print(json.dumps(datasets.load_from_disk(path).to_list()))\n")
    result = subprocess.run([str(TRAIN_PYTHON), "-c", script, str(prepared)], capture_output=True, text=True,
                            timeout=300, env={**os.environ, **TRAIN_ENV})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def labelled_positions(labels: list[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return tuple(i for i, v in enumerate(labels) if v != -100), tuple(v for v in labels if v != -100)


def test_config_points_at_the_chosen_boolean_labels(trained: dict[str, Any], labels: Path, base_model: Path,
                                                    workdir: Path) -> None:
    rendered = yaml.safe_load(trained["config"].read_text())
    assert rendered["process_reward_model"] is True and rendered["num_labels"] == 2
    assert rendered["model_type"] == "AutoModelForTokenClassification" and rendered["base_model"] == str(base_model)
    entry = rendered["datasets"][0]
    assert entry["type"] == "stepwise_supervised" and entry["step_separator"] == "\n"
    assert entry["path"] == str(labels.parent / "stepwise-hard.jsonl")
    written = [json.loads(line) for line in Path(entry["path"]).read_text().splitlines()]
    source = [json.loads(line) for line in labels.read_text().splitlines()]
    assert [r["labels"] for r in written] == [r["labels"] for r in source]
    soft = workdir / "soft.yaml"
    run_distill("config", "prm", "--data", labels, "--student", base_model, "--labels", "soft", "--out", soft)
    assert yaml.safe_load(soft.read_text())["datasets"][0]["path"].endswith("stepwise-soft.jsonl")
    bad = run_distill("config", "prm", "--data", labels, "--student", base_model, "--out", soft, "--labels", "most",
                      check=False)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --labels: 'most' is not hard or soft"


def test_axolotl_preprocess_holds_exactly_our_ids_and_label_positions(trained: dict[str, Any], labels: Path,
                                                                      base_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    rows = [json.loads(line) for line in (labels.parent / "stepwise-hard.jsonl").read_text().splitlines()]
    ours = Counter()
    for row in rows:
        trace = encode_stepwise(tokenizer, row["prompt"], row["completions"], "\n")
        ours[(tuple(trace.input_ids), tuple(trace.positions), tuple(int(v) for v in row["labels"]))] += 1
    prepared = prepared_rows(trained["config"])
    theirs = Counter((tuple(r["input_ids"]), *labelled_positions(r["labels"])) for r in prepared)
    assert len(rows) == 300 and theirs == ours  # shuffled by Axolotl, so compared as multisets


def test_encoder_matches_axolotls_strategy_on_nasty_rows(base_model: Path) -> None:
    """Axolotl's own StepwiseSupervisedPromptTokenizingStrategy (in .venv-train, its transformers) against ours."""
    from transformers import AutoTokenizer

    cases = [
        {"prompt": "Solve: ", "completions": ["Step 1: add.", "Step 2: done"], "sep": "\n"},
        {"prompt": "p", "completions": ["a\nb = 2.", "", "c\n\nd"], "sep": "\n"},  # separator inside, empty step
        {"prompt": "What is 3 + 4?", "completions": ["3 + 4 = 7.", "so 7"], "sep": " [end of step]"},
        {"prompt": "q", "completions": [f"{i} + 1 = {i + 1}." for i in range(300)], "sep": "\n"},  # long
        {"prompt": "with a BOS", "completions": ["x", "y"], "sep": "\n", "bos": "<|endoftext|>"},
    ]
    for case in cases:
        case["labels"] = [i % 2 == 0 for i in range(len(case["completions"]))]
    script = ("import json, sys\n"
              "from transformers import AutoTokenizer\n"
              "from axolotl.prompt_strategies.stepwise_supervised import StepwiseSupervisedPromptTokenizingStrategy\n"
              "out = []\n"
              "for c in json.loads(sys.stdin.read()):\n"
              "    extra = {'bos_token': c['bos']} if 'bos' in c else {}\n"
              "    tok = AutoTokenizer.from_pretrained(sys.argv[1], **extra)\n"
              "    s = StepwiseSupervisedPromptTokenizingStrategy(tok, 8192, step_separator=c['sep'])\n"
              "    out.append(s.tokenize_prompt(c))\n"
              "print(json.dumps(out))\n")
    result = subprocess.run([str(TRAIN_PYTHON), "-c", script, str(base_model)], input=json.dumps(cases),
                            capture_output=True, text=True, timeout=300, env={**os.environ, **TRAIN_ENV})
    assert result.returncode == 0, result.stderr[-3000:]
    lengths = []
    for case, axolotl in zip(cases, json.loads(result.stdout.strip().splitlines()[-1]), strict=True):
        tokenizer = AutoTokenizer.from_pretrained(base_model, **({"bos_token": case["bos"]} if "bos" in case else {}))
        trace = encode_stepwise(tokenizer, case["prompt"], case["completions"], case["sep"])
        positions, values = labelled_positions(axolotl["labels"])
        assert trace.input_ids == axolotl["input_ids"], case["prompt"]
        assert tuple(trace.positions) == positions and values == tuple(int(v) for v in case["labels"])
        lengths.append(len(trace.input_ids))
    assert max(lengths) > 2000 and trace.input_ids[0] == tokenizer.bos_token_id is not None  # the cases did their job


def test_axolotl_ignores_step_separator_so_config_prm_refuses_another(trained: dict[str, Any], labels: Path,
                                                                      base_model: Path, workdir: Path) -> None:
    """Axolotl 0.19 validates a stepwise entry as an SFT dataset and drops step_separator: it trains with "\\n"."""
    text = trained["config"].read_text().replace('step_separator: "\\n"', 'step_separator: " ;;"')
    other = workdir / "other-separator.yaml"
    other.write_text(text.replace(str(workdir / "prepared"), str(workdir / "prepared-other")))
    run_distill("train", other, "--preprocess", timeout=600, env=TRAIN_ENV)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    (newline,) = tokenizer("\n", add_special_tokens=False)["input_ids"]
    rows = prepared_rows(other)
    assert rows and all(r["input_ids"][p] == newline for r in rows for p in labelled_positions(r["labels"])[0])
    result = run_distill("config", "prm", "--data", labels, "--student", base_model, "--out", workdir / "x.yaml",
                         "--template", other, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: --template: step_separator: ' ;;' would be ignored")


def test_trained_prm_is_a_token_classifier_that_tells_right_steps_from_wrong(trained: dict[str, Any],
                                                                            workdir: Path) -> None:
    losses = trained["losses"]
    assert len(losses) == 60 and sum(losses[-10:]) / 10 < 0.5 * sum(losses[:5]) / 5
    config = json.loads((trained["model"] / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForTokenClassification"]
    assert (trained["model"] / "model.safetensors").exists()
    report_file = workdir / "report.json"
    result = run_distill("prm-eval", "--model", trained["model"], "--style", "stepwise", "--data",
                         workdir / "heldout.jsonl", "--device", "cpu", "--out", report_file)
    report = json.loads(report_file.read_text())
    assert "ProcessBench F1" in result.stdout and report["style"] == "stepwise" and report["traces"] == 40
    assert report["n_erroneous"] > 5 and report["n_correct"] > 5
    assert report["f1"] >= 0.9, report

    from pipelines.spec import PrmConfig
    from prm.scorer import PrmScorer

    heldout = [json.loads(line) for line in (workdir / "heldout.jsonl").read_text().splitlines()]
    scorer = PrmScorer(PrmConfig(model=str(trained["model"]), style="stepwise", device="cpu"))
    rewards = scorer.step_rewards([(r["prompt"], r["completions"]) for r in heldout])
    pairs = [(s, ok) for r, scores in zip(heldout, rewards, strict=True)
             for s, ok in zip(scores, r["labels"], strict=True)]
    right, wrong = [s for s, ok in pairs if ok], [s for s, ok in pairs if not ok]
    print(f"trained PRM: mean reward {sum(right) / len(right):.3f} at right steps, {sum(wrong) / len(wrong):.3f} "
          f"at wrong ones")
    assert sum(right) / len(right) > 0.75 and sum(wrong) / len(wrong) < 0.25  # seen: 0.91/0.13, 0.997/0.003

    # the untrained base is no token classifier: one line naming the field and the fix
    bad = run_distill("prm-eval", "--model", workdir / "base", "--style", "stepwise", "--data",
                      workdir / "heldout.jsonl", check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert bad.stderr.startswith("error: prm.model:") and "is Qwen2ForCausalLM, not a token classifier" in bad.stderr


def thought(row: dict[str, Any]) -> str:
    return "\n\n".join(row["completions"])


def test_prm_score_and_a_spec_prm_section_reject_the_traces_with_a_wrong_step(trained: dict[str, Any],
                                                                              workdir: Path) -> None:
    rows = [json.loads(line) for line in (workdir / "heldout.jsonl").read_text().splitlines()]
    heldout = list({r["prompt"]: r for r in reversed(rows)}.values())[:12]  # one trace per problem
    foreign = write_jsonl(workdir / "traces.jsonl", [{"problem": r["prompt"], "thought": thought(r),
                                                      "answer": r["gold"]} for r in heldout])
    out = workdir / "scored"
    result = run_distill("prm-score", "--model", trained["model"], "--style", "stepwise", "--in", foreign,
                         "--out", out, "--device", "cpu")
    assert "12 traces scored" in result.stdout
    df = pd.read_parquet(out)
    by_problem = {r["prompt"]: all(r["labels"]) for r in heldout}
    assert 0 < sum(by_problem.values()) < len(heldout)
    for row in df.itertuples():
        assert len(row.step_scores) == 2 and row.kept == by_problem[row.problem], row

    # `distill run` with a spec whose prm: section is the trained PRM: the prm stage rejects the same traces
    by_question = {r["prompt"]: r for r in heldout}
    source = write_jsonl(workdir / "problems.jsonl", [{"question": r["prompt"], "answer": r["gold"]} for r in heldout])

    def responder(messages: list[dict[str, str]], index: int) -> str:
        row = next(r for q, r in by_question.items() if q in messages[-1]["content"])
        return f"<thought>\n{thought(row)}\n</thought>\n\nThe answer is \\boxed{{{row['gold']}}}."

    with LoopbackTeacher(responder) as teacher:
        spec = write_spec(workdir / "prm-run.yaml", source, teacher={"base_url": teacher.base_url, "num_samples": 1},
                          dedupe={"enabled": False},
                          prm={"model": str(trained["model"]), "style": "stepwise", "device": "cpu"})
        run_distill("run", spec, "--out", workdir / "run")
    run = pd.read_parquet(workdir / "run")
    assert len(run) == 12 and run.correct.all()
    for row in run.itertuples():
        assert row.kept == by_problem[row.problem] and (row.rejection_reason == "prm") == (not row.kept), row


@pytest.mark.vllm
def test_real_vllm_pooling_server_scores_the_trained_prm_as_transformers_does(trained: dict[str, Any],
                                                                             workdir: Path) -> None:
    """`distill serve --task reward` (real vLLM, CPU build) on the trained PRM; the backend sends token ids."""
    from pipelines.spec import PrmConfig
    from prm.scorer import PrmScorer

    heldout = [json.loads(line) for line in (workdir / "heldout.jsonl").read_text().splitlines()]
    items = [(r["prompt"], r["completions"]) for r in heldout]
    local = PrmScorer(PrmConfig(model=str(trained["model"]), style="stepwise", device="cpu")).step_rewards(items)
    with served(trained["model"], "trained-prm", "--task", "reward", log_dir=workdir / "vllm-logs") as server:
        cfg = PrmConfig(model=str(trained["model"]), style="stepwise", backend="vllm", base_url=server.base_url,
                        served_model=server.name, batch_size=7, max_concurrency=2)
        remote = PrmScorer(cfg).step_rewards(items)
    for want, got in zip(local, remote, strict=True):
        assert got == pytest.approx(want, abs=1e-4)
    assert min(min(r) for r in remote) < 0.2 < 0.8 < max(max(r) for r in remote)  # the trained scores, not noise
