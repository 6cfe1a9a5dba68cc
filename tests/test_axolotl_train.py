"""The factory's output → `distill export` → `distill config` → real `axolotl preprocess` and `axolotl train`.

The teacher is a tiny model trained here and served by the real vLLM (conftest); it is also the student, so the
KD targets can be checked by hand and the KD loss of the teacher against its own targets must be ≈ 0.
Marked `train`: skipped without .venv-train, except in CI where it must run.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import ROOT, Served, lab_spec, require_venv, run_distill

pytestmark = [pytest.mark.train, pytest.mark.vllm, pytest.mark.slow]

AXOLOTL = ROOT / ".venv-train" / "bin" / "axolotl"
TRAIN_PYTHON = ROOT / ".venv-train" / "bin" / "python"
TOP_K = 4


@pytest.fixture(scope="module")
def axolotl_bin() -> Path:
    require_venv(".venv-train", "setup-train")
    return AXOLOTL


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory, vllm_teacher: Served, axolotl_bin: Path) -> Path:
    """A real `distill run` against the served lab teacher, with top-k logprobs (kept: well-formed traces)."""
    tmp = tmp_path_factory.mktemp("traces")
    spec = lab_spec(tmp / "kd-traces.yaml", vllm_teacher, n_problems=8, seed=5, verification="none",
                    num_samples=2, top_logprobs=TOP_K, temperature=0.6)
    run_distill("run", spec, "--out", tmp / "dataset")
    return tmp / "dataset"


@pytest.fixture(scope="module")
def student(vllm_teacher: Served) -> Path:
    """The teacher is its own student (one tokenizer, and a known answer for the KD loss)."""
    return vllm_teacher.model_dir


def axolotl(command: str, config: Path, cwd: Path) -> str:
    """Run `axolotl preprocess|train CONFIG` in .venv-train; returns its output (asserts success)."""
    env = {**os.environ, "AXOLOTL_DO_NOT_TRACK": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           # `axolotl train` launches `accelerate` from PATH; KD configs load the factory's plugin by name
           "PATH": f"{AXOLOTL.parent}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(ROOT)}
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


def export_and_config(tmp: Path, traces: Path, student: Path, fmt: str, method: str, *extra: Any,
                      sets: tuple[str, ...] = ()) -> list[Path]:
    run_distill("export", traces, "--format", fmt, "--student", student, "--max-seq-len", 512,
                "--out", tmp / f"export-{fmt}", *extra)
    return config_for(tmp, tmp / f"export-{fmt}", student, method, *sets)


def config_for(tmp: Path, export: Path, student: Path, method: str, *sets: str) -> list[Path]:
    name = f"{method}-{export.name}"
    result = run_distill("config", method, "--dataset", export, "--student", student, "--out", tmp / f"{name}.yaml",
                         "--output-dir", tmp / f"model-{name}", "--prepared-dir", tmp / f"prepared-{name}",
                         "--smoke", *(a for s in sets for a in ("--set", s)))
    return [Path(p) for p in re.findall(r"wrote (\S+\.yaml)", result.stdout)]


def assistant_span(tokenizer: Any, input_ids: list[int]) -> tuple[int, int]:
    """[start, end) of the assistant content, found by hand: after the last `<|im_start|>assistant\\n`."""
    header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    starts = [i + len(header) for i in range(len(input_ids)) if input_ids[i:i + len(header)] == header]
    end = input_ids.index(tokenizer.eos_token_id, starts[-1])
    return starts[-1], end


def test_sft_preprocess_masks_and_trains(tmp_path: Path, traces: Path, student: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(student)
    (config,) = export_and_config(tmp_path, traces, student, "sft", "sft")
    rendered = yaml.safe_load(config.read_text())
    assert rendered["base_model"] == str(student)
    assert rendered["datasets"][0]["roles_to_train"] == ["assistant"]
    exported = pq.read_table(tmp_path / "export-sft" / "train.parquet").to_pylist()
    axolotl("preprocess", config, tmp_path)
    rows = prepared_rows(config)
    assert len(rows) == len(exported) >= 12
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


def test_kd_targets_line_up_with_assistant_tokens_and_train(tmp_path: Path, traces: Path, student: Path,
                                                            vllm_teacher: Served) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(student)
    (config,) = export_and_config(tmp_path, traces, student, "kd", "kd", "--teacher-url", vllm_teacher.base_url,
                                  "--teacher-model", vllm_teacher.name)
    manifest = json.loads((tmp_path / "export-kd" / "export.json").read_text())
    assert manifest["top_k"] == TOP_K and manifest["kd"]["targets"]["scored"] == manifest["rows"] >= 12
    rendered = yaml.safe_load(config.read_text())
    assert rendered["datasets"][0]["type"] == "distill.axolotl.kd_plugin.chat_template"  # raw top-k, tail kept
    assert rendered["plugins"] == ["distill.axolotl.kd_plugin.plugin.TopKTailKDPlugin"]
    assert rendered["datasets"][0]["temperature"] == 1.0 and rendered["kd_trainer"] is True  # raw logprobs
    exported = pq.read_table(tmp_path / "export-kd" / "train.parquet").to_pylist()
    axolotl("preprocess", config, tmp_path)
    rows = prepared_rows(config)
    assert len(rows) == len(exported)
    im_end, thought = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<thought>")
    for row in rows:
        ids, labels, mask = row["input_ids"], row["labels"], row["target_mask"]
        target_ids, target_logprobs = row["target_token_ids"], row["target_logprobs"]
        assert len(target_ids) == len(ids) == len(mask)
        start, end = assistant_span(tokenizer, ids)
        assert [p for p, label in enumerate(labels) if label != -100] == list(range(start, end + 1))
        on = [p for p in range(len(ids)) if mask[p][0]]
        # target p is over token p + 1, trained when token p + 1 is: the positions before every assistant token and
        # <|im_end|> (Axolotl's own type masks by label p: it drops the first and trains one past <|im_end|>)
        assert on == list(range(start - 1, end))
        # by hand: the turn opens with <thought>, so the target just before it (the prompt's last token) has
        # <thought> as the teacher's most likely token, and the target at the last content token is over <|im_end|>
        assert ids[start] == thought and target_ids[start - 1][0] == thought
        assert ids[end] == im_end and target_ids[end - 1][0] == im_end
        for p in on:  # the teacher's raw top-k probabilities: what is left of 1 is the loss's tail bucket
            probs = [math.exp(v) for v in target_logprobs[p]]
            assert sum(probs) <= 1 + 1e-4 and len(set(target_ids[p])) == TOP_K
    output = axolotl("train", config, tmp_path)
    steps = losses(output)
    assert len(steps) == 3 and all(math.isfinite(v) and v >= 0 for v in steps)


def shifted_export(export: Path, out: Path) -> Path:
    """The same export with every target list moved one position late: the off-by-one a KD export must not have."""
    out.mkdir()
    rows = pq.read_table(export / "train.parquet").to_pylist()
    for row in rows:
        for column in ("target_token_ids", "logprobs"):
            row[column] = [row[column][0], *row[column][:-1]]
    pq.write_table(pa.Table.from_pylist(rows), out / "train.parquet")
    (out / "export.json").write_text((export / "export.json").read_text())
    return out


def test_teacher_as_its_own_student_has_zero_kd_loss(tmp_path: Path, traces: Path, student: Path,
                                                     vllm_teacher: Served) -> None:
    """Targets aligned right: the teacher's KD loss against its own targets is ≈ 0 at the first step, and clearly
    larger when the same targets are shifted by one position."""
    kd_only = ("kd_alpha=1.0", "kd_ce_alpha=0.0", "learning_rate=0.0", "max_steps=2", "seed=0")
    (config,) = export_and_config(tmp_path, traces, student, "kd", "kd", "--teacher-url", vllm_teacher.base_url,
                                  "--teacher-model", vllm_teacher.name, sets=kd_only)
    aligned = losses(axolotl("train", config, tmp_path))
    (shifted_config,) = config_for(tmp_path, shifted_export(tmp_path / "export-kd", tmp_path / "shifted"), student,
                                   "kd", *kd_only)
    shifted = losses(axolotl("train", shifted_config, tmp_path))
    print(f"KD loss, teacher as its own student: aligned {aligned}, shifted by one {shifted}")
    assert len(aligned) == len(shifted) == 2
    assert abs(aligned[0]) < 1e-3 and shifted[0] > 0.5


def test_curriculum_stage2_starts_from_stage1(tmp_path: Path, traces: Path, student: Path) -> None:
    configs = export_and_config(tmp_path, traces, student, "sft", "sft", "--curriculum",
                                "--stage1-min-pass-rate", "1.0", "--stage1-max-length-quantile", "0.5")
    assert [c.name for c in configs] == ["sft-export-sft-stage1.yaml", "sft-export-sft-stage2.yaml"]
    stage1, stage2 = (yaml.safe_load(c.read_text()) for c in configs)
    assert stage2["base_model"] == stage1["output_dir"] and stage1["base_model"] == str(student)
    first = pq.read_table(tmp_path / "export-sft" / "stage1.parquet").to_pylist()
    second = pq.read_table(tmp_path / "export-sft" / "stage2.parquet").to_pylist()
    assert first and second and all(r["pass_rate"] == 1.0 for r in first)
    assert max(r["length"] for r in first) <= min(r["length"] for r in second if r["pass_rate"] == 1.0)
    for config in configs:
        steps = losses(axolotl("train", config, tmp_path))
        assert len(steps) == 3 and all(math.isfinite(v) for v in steps)
    assert (Path(stage2["output_dir"]) / "model.safetensors").exists()


def test_shipped_templates_pass_axolotls_own_validation(axolotl_bin: Path) -> None:
    """Every template in axolotl_configs/ (multi-GPU ones as on 2 GPUs) passes Axolotl's config schema, with its
    plugins registered first (so the factory's KD plugin checks its keys, and Axolotl reads them by its schema)."""
    from distill.axolotl.configs import TEMPLATES_DIR

    script = ("import sys, yaml\n"
              "from axolotl.utils.config import prepare_plugins, validate_config\n"
              "from axolotl.utils.dict import DictDefault\n"
              "for path in sys.argv[1:]:\n"
              "    cfg = DictDefault(yaml.safe_load(open(path)))\n"
              "    prepare_plugins(cfg)\n"
              "    validated = validate_config(cfg, capabilities={'bf16': True,"
              " 'fp8': False, 'n_gpu': 2, 'n_node': 1, 'compute_capability': 'sm_90'},"
              " env_capabilities={'torch_version': '2.13.0'})\n"
              "    print('valid', path, validated.get('kd_divergence'))\n")
    templates = sorted(str(p) for p in TEMPLATES_DIR.glob("*.yaml"))
    result = subprocess.run([str(TRAIN_PYTHON), "-c", script, *templates], capture_output=True, text=True,
                            timeout=600, cwd=ROOT, env={**os.environ, "AXOLOTL_DO_NOT_TRACK": "1", "DO_NOT_TRACK": "1",
                                                        "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("valid ") == len(templates) == 8  # + sft-qat, kd-qat, prm
    assert result.stdout.count(" forward\n") == 4  # every KD template, read through the plugin's schema
    assert "deprecated and will be removed" not in result.stdout + result.stderr
