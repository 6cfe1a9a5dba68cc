"""The factory's output → `distill export` → `distill config` → real `axolotl preprocess` and `axolotl train`.

The tiny local model is both teacher and student: the loopback teacher answers with real token ids of the
tiny tokenizer and top-k log-probabilities computed by the tiny model, as vLLM would with top_logprobs and
return_tokens_as_token_ids. Marked `train`: skipped without .venv-train, except in CI where it must run.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import threading
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import ROOT, run_distill, write_jsonl, write_spec

from pipelines.loopback.teacher import LoopbackTeacher

pytestmark = [pytest.mark.train, pytest.mark.slow]

AXOLOTL = ROOT / ".venv-train" / "bin" / "axolotl"
TRAIN_PYTHON = ROOT / ".venv-train" / "bin" / "python"
TOP_K = 4
# (question, answer, thought steps): more steps = a longer trace
PROBLEMS = [("What is 2 + 3?", "5", 1), ("What is 4 + 3?", "7", 1), ("What is 10 + 12?", "22", 2),
            ("What is 20 + 15?", "35", 4), ("What is 8 + 9?", "17", 3), ("What is 42 + 48?", "90", 5)]
ANSWERS = {q: (a, n) for q, a, n in PROBLEMS}


def responder(messages: list[dict[str, str]], index: int) -> str:
    """Sample 0: a clean <thought> trace. Sample 1: R1-style <think> on easy problems, a wrong answer on the rest."""
    answer, steps = ANSWERS[messages[-1]["content"]]
    body = "\n\n".join(f"Step {i + 1}: add the numbers. {i} + {i} = {2 * i}" for i in range(steps))
    if index == 0:
        return f"<thought>\n{body}\n</thought>\n\n\\boxed{{{answer}}}"
    if steps <= 2:
        return f"<think>\n{body}\n</think>\n\n\\boxed{{{answer}}}"
    return f"<thought>\n{body}\n</thought>\n\n\\boxed{{100}}"


class TinyTeacherLogprobs:
    """``logprobs_fn`` for the loopback teacher: the completion's real token ids (plus the EOS vLLM reports) and,
    per token, the sampled id first and then the tiny model's most likely other ids, with the model's logprobs."""

    def __init__(self, model_dir: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.context = self.tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
        self.lock = threading.Lock()

    def __call__(self, text: str, k: int, as_ids: bool) -> dict[str, Any]:
        assert as_ids, "the KD export needs return_tokens_as_token_ids"
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        with self.lock, self.torch.no_grad():
            logits = self.model(self.torch.tensor([self.context + ids])).logits[0]
        logprobs = self.torch.log_softmax(logits.float(), dim=-1)
        content = []
        for i, token_id in enumerate(ids):
            row = logprobs[len(self.context) + i - 1]  # the distribution the token was sampled from
            others = [t for t in self.torch.topk(row, k + 1).indices.tolist() if t != token_id][:k - 1]
            tops = [{"token": f"token_id:{t}", "logprob": float(row[t]), "bytes": None} for t in [token_id, *others]]
            content.append({**tops[0], "top_logprobs": tops})
        return {"content": content}


@pytest.fixture(scope="module")
def axolotl_bin() -> Path:
    if not AXOLOTL.exists():
        if os.environ.get("CI"):
            pytest.fail(".venv-train/bin/axolotl is missing in CI: run `make setup-train` before the tests")
        pytest.skip(".venv-train is missing: `make setup-train` installs Axolotl")
    return AXOLOTL


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, axolotl_bin: Path) -> Path:
    """A real `distill run` against the loopback teacher, with top-k logprobs."""
    tmp = tmp_path_factory.mktemp("traces")
    source = write_jsonl(tmp / "problems.jsonl", [{"question": q, "answer": a} for q, a, _ in PROBLEMS])
    with LoopbackTeacher(responder, logprobs_fn=TinyTeacherLogprobs(tiny_model_dir)) as teacher:
        spec = write_spec(tmp / "kd-traces.yaml", source,
                          teacher={"base_url": teacher.base_url, "top_logprobs": TOP_K, "temperature": 0.8})
        run_distill("run", spec, "--out", tmp / "dataset")
        assert all(r.get("logprobs") for r in teacher.requests), "every request asked for logprobs"
    return tmp / "dataset"


def axolotl(command: str, config: Path, cwd: Path) -> str:
    """Run `axolotl preprocess|train CONFIG` in .venv-train; returns its output (asserts success)."""
    env = {**os.environ, "AXOLOTL_DO_NOT_TRACK": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           # `axolotl train` launches `accelerate` from PATH
           "PATH": f"{AXOLOTL.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run([str(AXOLOTL), command, str(config)], capture_output=True, text=True, cwd=cwd, env=env,
                            timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"axolotl {command} failed ({result.returncode}):\n{output[-6000:]}"
    return output


def prepared_rows(config: Path) -> list[dict[str, Any]]:
    """The tokenised rows `axolotl preprocess` saved (read in .venv-train, whose datasets wrote them)."""
    prepared = Path(yaml.safe_load(config.read_text())["dataset_prepared_path"])
    script = ("import json, sys, glob, datasets\n"
              "path = sorted(glob.glob(sys.argv[1] + '/*/dataset_info.json'))[0].rsplit('/', 1)[0]\n"
              "print(json.dumps(datasets.load_from_disk(path).to_list()))\n")
    result = subprocess.run([str(TRAIN_PYTHON), "-c", script, str(prepared)], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def losses(output: str) -> list[float]:
    """Per-step training losses from Axolotl's log lines."""
    return [float(v) for v in re.findall(r"'loss': '?([-+0-9.eEinfa]+)'?", output)]


def export_and_config(tmp: Path, traces: Path, tiny_model_dir: Path, fmt: str, method: str,
                      *extra: str) -> list[Path]:
    run_distill("export", traces, "--format", fmt, "--student", tiny_model_dir, "--max-seq-len", 512,
                "--out", tmp / f"export-{fmt}", *extra)
    result = run_distill("config", method, "--dataset", tmp / f"export-{fmt}", "--student", tiny_model_dir,
                         "--out", tmp / f"{method}.yaml", "--output-dir", tmp / f"model-{method}",
                         "--prepared-dir", tmp / f"prepared-{method}", "--smoke")
    return [Path(p) for p in re.findall(r"wrote (\S+\.yaml)", result.stdout)]


def assistant_span(tokenizer: Any, input_ids: list[int]) -> tuple[int, int]:
    """[start, end) of the assistant content, found by hand: after the last `<|im_start|>assistant\\n`."""
    header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    starts = [i + len(header) for i in range(len(input_ids)) if input_ids[i:i + len(header)] == header]
    end = input_ids.index(tokenizer.eos_token_id, starts[-1])
    return starts[-1], end


def test_sft_preprocess_masks_and_trains(tmp_path: Path, traces: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    (config,) = export_and_config(tmp_path, traces, tiny_model_dir, "sft", "sft")
    rendered = yaml.safe_load(config.read_text())
    assert rendered["base_model"] == str(tiny_model_dir)
    assert rendered["datasets"][0]["roles_to_train"] == ["assistant"]
    exported = pq.read_table(tmp_path / "export-sft" / "train.parquet").to_pylist()
    axolotl("preprocess", config, tmp_path)
    rows = prepared_rows(config)
    assert len(rows) == len(exported) >= 6
    for row in rows:
        ids, labels = row["input_ids"], row["labels"]
        start, end = assistant_span(tokenizer, ids)
        trained = [i for i, label in enumerate(labels) if label != -100]
        # exactly the assistant content and its <|im_end|>; system, user, headers and the final newline masked
        assert trained == list(range(start, end + 1))
        assert [labels[i] for i in trained] == ids[start:end + 1]
        assert tokenizer.decode(ids[start:end]).startswith("<thought>\n")
    output = axolotl("train", config, tmp_path)
    steps = losses(output)
    assert len(steps) == 3 and all(math.isfinite(v) and v > 0 for v in steps)
    assert (Path(rendered["output_dir"]) / "model.safetensors").exists()


def test_kd_targets_line_up_with_assistant_tokens_and_train(tmp_path: Path, traces: Path,
                                                            tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    (config,) = export_and_config(tmp_path, traces, tiny_model_dir, "kd", "kd")
    manifest = json.loads((tmp_path / "export-kd" / "export.json").read_text())
    # 6 clean <thought> traces align exactly; the 3 <think> ones are re-aligned (the tag tokens differ)
    assert manifest["top_k"] == TOP_K and manifest["rows"] == 9 and manifest["kd"]["exact_alignments"] == 6
    assert 0.9 <= manifest["kd"]["mean_coverage"] < 1.0
    rendered = yaml.safe_load(config.read_text())
    assert rendered["datasets"][0]["type"] == "axolotl.integrations.kd.chat_template"
    assert rendered["datasets"][0]["temperature"] == 0.8 and rendered["kd_trainer"] is True
    exported = {(r["problem_id"], r["sample_index"]): r
                for r in pq.read_table(tmp_path / "export-kd" / "train.parquet").to_pylist()}
    axolotl("preprocess", config, tmp_path)
    rows = prepared_rows(config)
    assert len(rows) == len(exported)
    im_end, thought = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("thought")
    realigned_rows = 0
    for row in rows:
        ids, labels, mask = row["input_ids"], row["labels"], row["target_mask"]
        target_ids, target_logprobs = row["target_token_ids"], row["target_logprobs"]
        assert len(target_ids) == len(ids) == len(mask)
        start, end = assistant_span(tokenizer, ids)
        assert [p for p, label in enumerate(labels) if label != -100] == list(range(start, end + 1))
        on = [p for p in range(len(ids)) if mask[p][0]]
        # Axolotl masks target p by label p: every assistant token from the second on, plus <|im_end|>
        assert on == list(range(start, end + 1))
        # target p is the distribution over token p+1: the sampled id comes first (our teacher lists it first,
        # a one-hot target is on the student's own token)
        assert all(target_ids[p][0] == ids[p + 1] for p in on)
        # by hand: "<" "thought" ">" opens the turn, so the target at "<" puts "thought" first, and the target
        # at the last content token is over <|im_end|>
        assert ids[start + 1] == thought and target_ids[start][0] == thought
        assert ids[end] == im_end and target_ids[end - 1][0] == im_end
        for p in on:
            probs = [math.exp(v) for v in target_logprobs[p]]
            assert abs(sum(probs) - 1) < 1e-4 and len(set(target_ids[p])) == TOP_K
        # teacher distributions of the random tiny model are spread out; one-hot targets are where the teacher's
        # tokens differ from the student's: only after <|im_end|> for exact rows, also at "thought" for <think>
        one_hot = [p for p in on if target_logprobs[p][0] > -1e-3]
        if one_hot == [end]:
            assert target_logprobs[end - 1][0] < -0.01  # the teacher's own distribution over <|im_end|>
        else:
            realigned_rows += 1
            assert start in one_hot and len(one_hot) < 0.1 * len(on)
    assert realigned_rows == 3
    output = axolotl("train", config, tmp_path)
    steps = losses(output)
    assert len(steps) == 3 and all(math.isfinite(v) and v > 0 for v in steps)


def test_curriculum_stage2_starts_from_stage1(tmp_path: Path, traces: Path, tiny_model_dir: Path) -> None:
    configs = export_and_config(tmp_path, traces, tiny_model_dir, "sft", "sft", "--curriculum",
                                "--stage1-min-pass-rate", "1.0", "--stage1-max-length-quantile", "0.5")
    assert [c.name for c in configs] == ["sft-stage1.yaml", "sft-stage2.yaml"]
    stage1, stage2 = (yaml.safe_load(c.read_text()) for c in configs)
    assert stage2["base_model"] == stage1["output_dir"] and stage1["base_model"] == str(tiny_model_dir)
    first = pq.read_table(tmp_path / "export-sft" / "stage1.parquet").to_pylist()
    second = pq.read_table(tmp_path / "export-sft" / "stage2.parquet").to_pylist()
    assert first and second and all(r["pass_rate"] == 1.0 for r in first)
    assert max(r["length"] for r in first) <= min(r["length"] for r in second if r["pass_rate"] == 1.0)
    for config in configs:
        steps = losses(axolotl("train", config, tmp_path))
        assert len(steps) == 3 and all(math.isfinite(v) for v in steps)
    assert (Path(stage2["output_dir"]) / "model.safetensors").exists()


def test_shipped_templates_pass_axolotls_own_validation(axolotl_bin: Path) -> None:
    """Every template in axolotl_configs/ (multi-GPU ones as on 2 GPUs) passes Axolotl's config schema."""
    from pipelines.axolotl.configs import TEMPLATES_DIR

    script = ("import sys, yaml\n"
              "from axolotl.utils.config import validate_config\n"
              "from axolotl.utils.dict import DictDefault\n"
              "for path in sys.argv[1:]:\n"
              "    validate_config(DictDefault(yaml.safe_load(open(path))), capabilities={'bf16': True,"
              " 'fp8': False, 'n_gpu': 2, 'n_node': 1, 'compute_capability': 'sm_90'},"
              " env_capabilities={'torch_version': '2.13.0'})\n"
              "    print('valid', path)\n")
    templates = sorted(str(p) for p in TEMPLATES_DIR.glob("*.yaml"))
    result = subprocess.run([str(TRAIN_PYTHON), "-c", script, *templates], capture_output=True, text=True,
                            timeout=600, cwd=ROOT, env={**os.environ, "AXOLOTL_DO_NOT_TRACK": "1", "DO_NOT_TRACK": "1",
                                                        "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("valid ") == len(templates) == 5
    assert "deprecated and will be removed" not in result.stdout + result.stderr
