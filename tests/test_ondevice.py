"""The on-device student: `distill config --qat` → real `axolotl preprocess`/`train` with fake quantization,
`distill export-model` (torchao int8/int4, GGUF) loads and generates, and the latency bench runs.

The student is a random lab-shaped Qwen2 with the dictation tokenizer (built here in seconds); the Axolotl tests
are marked `train` (skipped without .venv-train, except in CI).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import ROOT, run_distill


@pytest.fixture(scope="module")
def dictation_student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random student (the lab's student shape) with a dictation tokenizer; widths 64/128 fit group size 32."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from lab.tasks import examples, get_task
    from lab.teacher import STUDENT_SHAPE, build_tokenizer, save_model

    out = tmp_path_factory.mktemp("student") / "model"
    spec = get_task("dictation")
    corpus = [spec.system_prompt + "\n" + ex.problem + "\n" + ex.solution for ex in examples("dictation", 64, 0, 2)]
    tokenizer = build_tokenizer(corpus, 700)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None, max_position_embeddings=512,
                         **STUDENT_SHAPE)
    save_model(Qwen2ForCausalLM(config).eval(), tokenizer, out)
    return out


@pytest.fixture(scope="module")
def sft_export(tmp_path_factory: pytest.TempPathFactory, dictation_student: Path) -> Path:
    """An SFT export folder (what `distill export --format sft` writes) of dictation clean-ups."""
    from lab.tasks import examples, get_task

    out = tmp_path_factory.mktemp("export")
    spec = get_task("dictation")
    rows = [{"messages": [{"role": "system", "content": spec.system_prompt}, {"role": "user", "content": ex.problem},
                          {"role": "assistant", "content": ex.solution}]} for ex in examples("dictation", 16, 1, 2)]
    pq.write_table(pa.Table.from_pylist(rows), out / "train.parquet")
    (out / "export.json").write_text(json.dumps({
        "format": "sft", "file_format": "parquet", "student": str(dictation_student), "max_seq_len": 512,
        "longest_seq_len": None, "rows": len(rows), "files": [{"path": "train.parquet", "rows": len(rows)}]}))
    return out


def render(tmp: Path, export: Path, student: Path, name: str, *flags: str) -> Path:
    result = run_distill("config", "sft", "--dataset", export, "--student", student, "--out", tmp / f"{name}.yaml",
                         "--output-dir", tmp / f"model-{name}", "--prepared-dir", tmp / f"prepared-{name}",
                         "--smoke", "--set", "seed=0", *flags)
    (path,) = re.findall(r"wrote (\S+\.yaml)", result.stdout)
    return Path(path)


def test_config_qat_renders_the_qat_section(tmp_path: Path, sft_export: Path, dictation_student: Path) -> None:
    config = yaml.safe_load(render(tmp_path, sft_export, dictation_student, "qat", "--qat").read_text())
    assert config["qat"] == {"activation_dtype": "int8", "weight_dtype": "int4", "group_size": 32,
                             "quantize_embedding": False}
    plain = yaml.safe_load(render(tmp_path, sft_export, dictation_student, "plain").read_text())
    assert "qat" not in plain and {k: v for k, v in config.items() if k not in ("qat", "output_dir",
                                   "dataset_prepared_path")} == {k: v for k, v in plain.items()
                                                                  if k not in ("output_dir", "dataset_prepared_path")}
    # a QAT template keeps its own (commented) section; --set still wins
    kept = render(tmp_path, sft_export, dictation_student, "tpl", "--qat", "--template", "sft-qat-qwen2.5-1.5b.yaml",
                  "--set", "max_steps=2")
    text = kept.read_text()
    assert text.count("\nqat:") == 1 and "# per-token dynamic int8 activations" in text
    assert yaml.safe_load(text)["max_steps"] == 2


@pytest.mark.train
@pytest.mark.slow
def test_qat_preprocess_and_train(tmp_path: Path, sft_export: Path, dictation_student: Path) -> None:
    """`axolotl preprocess` accepts the QAT config, and a 3-step QAT run trains: its losses differ from the same
    run without QAT (the forward pass sees int4/int8 fake quantization), and the saved model has plain weights."""
    from conftest import require_venv
    from safetensors import safe_open

    from distill.axolotl.train import losses, run_axolotl

    require_venv(".venv-train", "setup-train")
    qat = render(tmp_path, sft_export, dictation_student, "qat", "--qat")
    output = run_axolotl("preprocess", qat, cwd=tmp_path)
    assert "qat" in yaml.safe_load(qat.read_text())
    assert any((tmp_path / "prepared-qat").rglob("dataset_info.json")), output[-2000:]
    qat_steps = losses(run_axolotl("train", qat, cwd=tmp_path))
    plain_steps = losses(run_axolotl("train", render(tmp_path, sft_export, dictation_student, "plain"), cwd=tmp_path))
    print(f"losses with QAT {qat_steps}, without {plain_steps}")
    assert len(qat_steps) == len(plain_steps) == 3 and all(math.isfinite(v) and v > 0 for v in qat_steps)
    assert qat_steps[0] != plain_steps[0]  # same init, data and seed: only the fake quantization differs
    with safe_open(str(tmp_path / "model-qat" / "model.safetensors"), "pt") as weights:
        names = list(weights.keys())
    assert "model.layers.0.mlp.up_proj.weight" in names and not any("fake" in n or "scale" in n for n in names)


def test_export_model_int4_gguf_loads_and_generates(tmp_path: Path, dictation_student: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "device"
    result = run_distill("export-model", dictation_student, "--quantize", "int4", "--gguf", "--out", out)
    assert "generates" in result.stdout and "model.gguf q8_0" in result.stdout
    record = json.loads((out / "ondevice.json").read_text())
    assert record["quantize"] == "int4" and record["check"]["generates"] is True
    assert 0.0 <= record["check"]["token_agreement_with_fp32"] <= 1.0 and len(record["check"]["samples"]) == 2
    assert record["torchao"]["bytes"] < record["torchao"]["source_bytes"]
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "torchao"
    model = AutoModelForCausalLM.from_pretrained(out)
    weight = model.model.layers[0].mlp.up_proj.weight
    assert type(weight).__name__ == "IntxUnpackedToInt8Tensor"
    values = weight.qdata  # int4 values stored in int8, one scale per 32 inputs
    assert values.dtype == torch.int8 and int(values.min()) >= -8 and int(values.max()) <= 7
    assert weight.scale.shape[-1] == weight.shape[-1] // 32
    reference = AutoModelForCausalLM.from_pretrained(dictation_student)
    ids = torch.tensor([[1, 5, 9, 12, 40, 2]])
    with torch.no_grad():
        error = (model(ids).logits - reference(ids).logits).abs().max().item()
    assert 0 < error < 1.0  # quantized, not the same weights, and close
    gguf = record["gguf_file"]
    assert gguf["tensors"] == 2 * 12 + 2 and gguf["max_relative_error"] < 0.01  # 12 per layer, token_embd, output_norm
    assert gguf["eos_token_id"] == json.loads((dictation_student / "config.json").read_text())["eos_token_id"]
    assert gguf["llama_cpp"].get("generates", True)


def test_export_model_errors_name_the_field(tmp_path: Path, dictation_student: Path) -> None:
    for args, message in [(("--quantize", "int3"), "--quantize:"), ((), "--quantize: give int8 or int4"),
                          (("--quantize", "int4", "--group-size", "48"), "--group-size: 48 does not divide"),
                          (("--gguf", "--gguf-type", "q2"), "--gguf-type:")]:
        result = run_distill("export-model", dictation_student, *args, "--out", tmp_path / "x", check=False)
        assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith(f"error: {message}")
    result = run_distill("export-model", tmp_path, "--quantize", "int8", "--out", tmp_path / "x", check=False)
    assert result.returncode == 2 and "CKPT:" in result.stderr


def test_latency_bench_prints_ratios(dictation_student: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "latency.py"), "--student", str(dictation_student),
                             "--prompts", "2", "--max-new-tokens", "8"], capture_output=True, text=True, timeout=600,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()
            if line.split() and line.split()[0] in ("fp32", "ptq-int8", "ptq-int4")}
    assert set(rows) == {"fp32", "ptq-int8", "ptq-int4"}
    assert rows["fp32"][-2:] == ["1.00x", "1.00x"]  # the baseline against itself
    assert all(float(rows[name][1]) > 0 and float(rows[name][3]) > 0 for name in rows)  # p50 ms, tok/s


def test_ondevice_lab_config_and_eval_set(tmp_path: Path) -> None:
    """The shipped on-device lab config has a QAT variant, and its eval set scores clean-ups by chrF (and WER)."""
    from lab.config import load_lab_config
    from lab.ondevice import OnDeviceLoop, summarize

    cfg = load_lab_config("ondevice")
    assert cfg.teacher.task == "dictation" and [(v.name, v.qat) for v in cfg.students.variants] == [
        ("kd", False), ("kd-qat", True)]
    held_out = tmp_path / "held.jsonl"
    held_out.write_text(json.dumps({"question": "um the cat sat period", "answer": "The cat sat."}) + "\n")
    data = yaml.safe_load(OnDeviceLoop(cfg, tmp_path).eval_set(held_out).read_text())
    assert data["verification"] == "similarity" and data["similarity"] == {"metric": "chrf", "threshold": 0.6}
    assert data["prompt"]["system"].startswith("Clean up the dictation")
    table = summarize({"m": {"runs": {"m": {"lab-dictation": {"all": {"pass@1": 0.5, "chrf": 0.81, "wer": 0.2}}}}}},
                      "bench lines")
    assert "| m | 0.500 | 0.810 | 0.200 |" in table and "bench lines" in table
