"""Pure pieces of the Axolotl export: KD alignment, curriculum split, config rendering, and the CLI's user errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import run_distill

from distill.axolotl.configs import DELETE, METHODS, TEMPLATES_DIR, parse_overrides, render, set_key
from distill.axolotl.curriculum import CurriculumConfig, difficulties, length_percentiles, split_stages
from distill.axolotl.kd_align import (
    FILLER_LOGPROB,
    KDFormatError,
    StudentTurn,
    axolotl_columns,
    one_hot,
    parse_token_id,
    student_turn,
    targets_from_generation,
    targets_from_scores,
)
from distill.axolotl.kd_plugin.rules import DATASET_TYPE as KD_DATASET_TYPE
from distill.axolotl.kd_plugin.rules import PLUGIN as KD_PLUGIN
from distill.axolotl.kd_plugin.rules import kd_config_problem
from distill.kd.score import Scored
from pipelines.spec import SpecError


def dist(*pairs: tuple[int, float]) -> list[dict]:
    return [{"token": f"token_id:{t}", "logprob": lp} for t, lp in pairs]


# --- KD alignment -----------------------------------------------------------------------------------------------

def test_parse_token_id_rejects_strings() -> None:
    assert parse_token_id("token_id:42") == 42
    for bad in ["hello", "token_id:x", 5]:
        with pytest.raises(KDFormatError):
            parse_token_id(bad)


def test_generation_targets_are_shifted_by_one_and_right_aligned() -> None:
    # conversation: prompt [1, 2, 3], content [10, 11, 12], end of turn [99, 50]
    turn = StudentTurn([1, 2, 3, 10, 11, 12, 99, 50], content_start=3, content_end=6)
    tokens = ["token_id:10", "token_id:11", "token_id:12", "token_id:99"]  # vLLM lists the EOS too
    topk = [dist((10, -0.1), (20, -2.5)), dist((21, -1.9), (11, -0.2)), dist((12, -0.3), (22, -1.5)),
            dist((99, -0.05), (23, -3.0))]
    targets = targets_from_generation(turn, [1, 2, 3], tokens, topk, k=2, vocab_size=100)
    # positions 2..7: one list per position from the prompt's last token to the end
    assert len(targets.logprobs) == len(turn.input_ids) - turn.content_start + 1
    firsts = [parse_token_id(position[0]["token"]) for position in targets.logprobs]
    assert firsts == [10, 11, 12, 99, 50, 50]  # target p is over token p+1, most likely first; then fillers
    assert targets.logprobs[0][1] == {"token": "token_id:20", "logprob": -2.5}
    assert targets.logprobs[3][0]["logprob"] == -0.05  # the teacher's own distribution over its EOS
    assert targets.logprobs[4] == one_hot(50, 2)  # the template's newline: the teacher never scored it
    assert targets.source == "generation"
    columns = axolotl_columns(targets)
    assert columns["target_token_ids"][0] == [10, 20] and columns["logprobs"][0] == [-0.1, -2.5]


def test_generation_targets_only_when_provably_the_students_tokens() -> None:
    turn = StudentTurn([1, 8, 5, 6, 7, 99], content_start=1, content_end=5)
    topk = [dist((9, -0.1)), dist((5, -0.2)), dist((6, -0.3)), dist((7, -0.4)), dist((99, -0.1))]
    same = ["token_id:8", "token_id:5", "token_id:6", "token_id:7", "token_id:99"]
    assert targets_from_generation(turn, [1], same, topk, k=3, vocab_size=100) is not None
    think = ["token_id:9", "token_id:5", "token_id:6", "token_id:7", "token_id:99"]  # <think> for <thought>
    assert targets_from_generation(turn, [1], think, topk, k=3, vocab_size=100) is None
    assert targets_from_generation(turn, [2], same, topk, k=3, vocab_size=100) is None  # another prompt
    assert targets_from_generation(turn, None, same, topk, k=3, vocab_size=100) is None  # prompt unknown
    assert targets_from_generation(turn, [1], same[:-1], topk[:-1], k=3, vocab_size=100) is None  # no end of turn


def test_scored_targets_cover_every_position() -> None:
    turn = StudentTurn([1, 2, 10, 11, 99, 50], content_start=2, content_end=4)
    # position i: the top before i, and the teacher's log-probability of token i (here outside the top at i = 3)
    scores = [None] + [Scored([(t, -0.1), (t + 1, -2.0)], -7.0 if i == 3 else -0.1)
                       for i, t in enumerate([2, 10, 11, 99, 50], start=1)]
    targets = targets_from_scores(turn, scores, k=3, vocab_size=200)
    assert [parse_token_id(p[0]["token"]) for p in targets.logprobs] == [10, 11, 99, 50, 50]
    assert targets.logprobs[3][:2] == [{"token": "token_id:50", "logprob": -0.1},
                                       {"token": "token_id:51", "logprob": -2.0}]
    assert targets.logprobs[0][2]["logprob"] == FILLER_LOGPROB  # short lists are padded to k
    assert targets.source == "scored"
    # target p is over token p + 1: its log-probability is scores[p + 1]'s; after the last token 0 (masked)
    assert targets.token_logprobs == [-0.1, -7.0, -0.1, -0.1, 0.0]
    columns = axolotl_columns(targets)
    assert columns["target_token_logprob"] == targets.token_logprobs
    assert len(columns["target_token_logprob"]) == len(columns["logprobs"])
    with pytest.raises(KDFormatError, match="scored positions"):
        targets_from_scores(turn, scores[:-1], k=3, vocab_size=200)


def test_bad_logprobs_are_errors() -> None:
    turn = StudentTurn([1, 5, 99], content_start=1, content_end=2)
    with pytest.raises(KDFormatError, match="outside"):
        targets_from_generation(turn, [1], ["token_id:5", "token_id:99"], [dist((5, -0.1), (500, -1.0))] * 2,
                                k=2, vocab_size=100)
    with pytest.raises(KDFormatError, match="top-k lists"):
        targets_from_generation(turn, [1], ["token_id:5", "token_id:6"], [dist((5, -0.1))], k=2, vocab_size=100)


def test_student_turn_on_the_tiny_chat_template(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    content = "<thought>\nStep 1: 2 + 3 = 5\n</thought>\n\n\\boxed{5}"
    messages = [{"role": "system", "content": "Be careful."}, {"role": "user", "content": "What is 2 + 3?"},
                {"role": "assistant", "content": content}]
    turn = student_turn(tokenizer, messages)
    assert tokenizer.decode(turn.input_ids[turn.content_start:turn.content_end]) == content
    assert turn.input_ids[turn.content_end:] == [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("Ċ")]


# --- curriculum -------------------------------------------------------------------------------------------------

def test_curriculum_split_puts_short_easy_traces_first() -> None:
    pass_rates = [1.0, 1.0, 0.5, 1.0, 0.25, None]
    lengths = [10, 50, 10, 20, 40, 5]
    first, second = split_stages(pass_rates, lengths, CurriculumConfig(stage1_min_pass_rate=0.75,
                                                                       stage1_max_length_quantile=0.5))
    assert first == [0]  # median length 10: only the short, fully solved trace
    assert sorted(first + second) == list(range(6))
    scores = difficulties(pass_rates, lengths)
    assert [scores[i] for i in second] == sorted(scores[i] for i in second)
    assert length_percentiles([3, 1, 2]) == pytest.approx([1.0, 1 / 3, 2 / 3])
    assert difficulties([1.0, 0.0], [1, 2]) == [0.25, 1.0]


# --- config rendering -------------------------------------------------------------------------------------------

TEMPLATE = """# header
base_model: old/model   # the student
datasets:
  - path: old.parquet  # the data
    type: chat_template

# --- section ---
bf16: auto
deepspeed: zero.json
fsdp_config:
  offload_params: false
seed: 1
"""


def test_render_keeps_comments_and_sets_values() -> None:
    text = render(TEMPLATE, {"base_model": "/m", "deepspeed": DELETE, "fsdp_config": DELETE, "max_steps": 3,
                             "bf16": False, "save_strategy": "no"},
                  {"path": "/x/train.parquet", "ds_type": "parquet"})
    config = yaml.safe_load(text)
    assert config["base_model"] == "/m" and config["max_steps"] == 3 and config["save_strategy"] == "no"
    assert "deepspeed" not in config and "fsdp_config" not in config and config["seed"] == 1
    assert config["datasets"] == [{"path": "/x/train.parquet", "ds_type": "parquet", "type": "chat_template"}]
    assert "base_model: /m   # the student" in text and "# the data" in text and "# --- section ---" in text
    assert set_key("a: 1\n", "b", [1, 2]).endswith("b:\n- 1\n- 2\n")


def test_parse_overrides() -> None:
    assert parse_overrides(["max_steps=10", "bf16=false", "learning_rate=2e-5", "name=run one"]) == {
        "max_steps": 10, "bf16": False, "learning_rate": 2e-5, "name": "run one"}
    with pytest.raises(SpecError, match="--set"):
        parse_overrides(["datasets.0.path"])


@pytest.mark.parametrize("template", sorted(p.name for p in TEMPLATES_DIR.glob("*.yaml")))
def test_shipped_templates_are_complete(template: str) -> None:
    config = yaml.safe_load((TEMPLATES_DIR / template).read_text())
    for key in ["base_model", "datasets", "output_dir", "sequence_len", "micro_batch_size", "learning_rate"]:
        assert key in config, key
    entry = config["datasets"][0]
    if template.startswith("prm"):  # a PRM trains on steps, not chat messages
        assert entry["type"] == "stepwise_supervised" and config["process_reward_model"] is True
        assert config["model_type"] == "AutoModelForTokenClassification" and config["num_labels"] == 2
    else:
        assert entry["roles_to_train"] == ["assistant"] and entry["field_messages"] == "messages"
    if template.startswith("kd"):  # the factory's top-k + tail plugin, with settings its rules accept
        assert config["plugins"] == [KD_PLUGIN] and config["kd_trainer"] is True
        assert config["kd_divergence"] == "forward" and kd_config_problem(config) is None
    if template.startswith("kd-online"):
        assert config["kd_online_server_base_url"].startswith("http") and entry["type"] == "chat_template"
    elif template.startswith("kd"):
        assert entry["type"] == KD_DATASET_TYPE and entry["logprobs_field"] == "logprobs"
        assert entry["temperature"] == 1.0  # vLLM's log-probabilities are raw, whatever the sampling temperature
    if "deepspeed" in template:
        assert (TEMPLATES_DIR.parent / config["deepspeed"]).is_file()
    if "fsdp" in template:
        assert config["fsdp_version"] == 2 and config["fsdp_config"]["transformer_layer_cls_to_wrap"]
    assert set(METHODS.values()) <= {p.name for p in TEMPLATES_DIR.glob("*.yaml")}


# --- the CLI on a hand-written dataset folder -------------------------------------------------------------------

def _dataset(folder: Path, tokenizer, shift: int = 0, with_logprobs: bool = True) -> Path:
    """A dataset folder like `distill run` writes: 3 kept traces (token ids shifted by ``shift``) and 1 rejected."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (steps, pass_rate) in enumerate([(1, 1.0), (3, 0.5), (2, 1.0), (1, 0.0)]):
        body = "\n\n".join(f"Step {s + 1}: 2 + 3 = 5" for s in range(steps))
        completion = f"<thought>\n{body}\n</thought>\n\n\\boxed{{5}}"
        ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        row = {"problem_id": f"p{i}", "sample_index": 0, "problem": "What is 2 + 3?", "completion": completion,
               "kept": i < 3, "pass_rate": pass_rate, "completion_tokens": len(ids), "teacher_model": "tiny",
               "messages": [{"role": "user", "content": "What is 2 + 3?"},
                            {"role": "assistant", "content": completion}] if i < 3 else None}
        if with_logprobs:
            row["prompt_token_ids"] = tokenizer.apply_chat_template(
                [{"role": "user", "content": "What is 2 + 3?"}], tokenize=True, return_dict=False,
                add_generation_prompt=True)
            row["tokens"] = [f"token_id:{t + shift}" for t in ids]
            row["logprobs"] = [dist((t + shift, -0.5), ((t + shift + 1) % 400, -1.0)) for t in ids]
        rows.append(row)
    pq.write_table(pa.Table.from_pylist(rows), folder / "data-00000-of-00001.parquet")
    return folder


def test_export_kd_and_config_from_the_cli(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    dataset = _dataset(tmp_path / "ds", AutoTokenizer.from_pretrained(tiny_model_dir))
    result = run_distill("export", dataset, "--format", "kd", "--student", tiny_model_dir, "--file-format", "jsonl",
                         "--out", tmp_path / "kd")
    assert "train.jsonl (3 rows)" in result.stdout
    manifest = json.loads((tmp_path / "kd" / "export.json").read_text())
    assert manifest["top_k"] == 2 and manifest["kd"]["targets"] == {"scored": 0, "generation": 3}
    assert manifest["kept_in_source"] == 3 and manifest["kd"]["distribution"]["temperature"] == 1.0
    rows = [json.loads(line) for line in (tmp_path / "kd" / "train.jsonl").read_text().splitlines()]
    assert all(len(r["logprobs"]) == len(r["target_token_ids"]) for r in rows)
    assert all(math.isfinite(v) for r in rows for position in r["logprobs"] for v in position)
    run_distill("config", "kd", "--dataset", tmp_path / "kd", "--student", tiny_model_dir,
                "--out", tmp_path / "kd.yaml", "--set", "max_steps=7")
    config = yaml.safe_load((tmp_path / "kd.yaml").read_text())
    assert config["datasets"][0]["ds_type"] == "json" and config["max_steps"] == 7
    assert config["datasets"][0]["path"] == str((tmp_path / "kd" / "train.jsonl").resolve())
    # the export was aligned to this student: another one is a one-line error
    other = run_distill("config", "kd", "--dataset", tmp_path / "kd", "--student", "Qwen/Qwen2.5-1.5B-Instruct",
                        "--out", tmp_path / "x.yaml", check=False)
    assert other.returncode == 2 and other.stderr.startswith("error: --student:")
    # another checkpoint with the very tokenizer the targets were aligned with is fine (a student's next round)
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "checkpoint")
    run_distill("config", "kd", "--dataset", tmp_path / "kd", "--student", tmp_path / "checkpoint",
                "--out", tmp_path / "next.yaml")
    assert yaml.safe_load((tmp_path / "next.yaml").read_text())["base_model"] == str(tmp_path / "checkpoint")


@pytest.mark.parametrize("args, message", [
    (["--format", "kd"], "error: --student:"),
    (["--format", "kd", "--student", "{model}", "--top-k", "30"], "error: --top-k:"),
    (["--format", "kd", "--student", "{model}", "--top-k", "5"], "error: --top-k: the run stored the top 2"),
    (["--format", "kd", "--student", "{model}", "--teacher-url", "http://127.0.0.1:9/v1"], "error: --teacher-model:"),
    (["--curriculum", "--stage1-min-pass-rate", "0", "--stage1-max-length-quantile", "1"],
     "error: --curriculum: stage 2 is empty"),
])
def test_export_user_errors(tmp_path: Path, tiny_model_dir: Path, args: list[str], message: str) -> None:
    from transformers import AutoTokenizer

    dataset = _dataset(tmp_path / "ds", AutoTokenizer.from_pretrained(tiny_model_dir))
    args = [str(tiny_model_dir) if a == "{model}" else a for a in args]
    result = run_distill("export", dataset, *args, "--out", tmp_path / "out", check=False)
    assert result.returncode == 2 and result.stderr.strip().startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_kd_export_refuses_a_foreign_tokenizer_and_missing_logprobs(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    foreign = _dataset(tmp_path / "foreign", tokenizer, shift=7)  # ids of "another vocabulary"
    result = run_distill("export", foreign, "--format", "kd", "--student", tiny_model_dir, "--out", tmp_path / "o",
                         check=False)
    assert result.returncode == 2 and "not the teacher's tokenizer" in result.stderr
    plain = _dataset(tmp_path / "plain", tokenizer, with_logprobs=False)
    result = run_distill("export", plain, "--format", "kd", "--student", tiny_model_dir, "--out", tmp_path / "o",
                         check=False)
    assert result.returncode == 2 and "teacher.top_logprobs" in result.stderr and "--teacher-url" in result.stderr
    # the same folder exports fine as SFT
    run_distill("export", plain, "--format", "sft", "--out", tmp_path / "sft")
    rows = pq.read_table(tmp_path / "sft" / "train.parquet").to_pylist()
    assert len(rows) == 3 and rows[0]["messages"][-1]["content"].startswith("<thought>")


def test_prepared_data_older_than_its_dataset_is_dropped_before_training(tmp_path: Path) -> None:
    """Axolotl keys its tokenised cache by the config, not the files: a re-export to the same path must not train
    on the old rows."""
    import os

    import yaml

    from distill.axolotl.train import drop_stale_prepared

    data = tmp_path / "train.parquet"
    data.write_bytes(b"rows")
    prepared = tmp_path / "prepared" / "a91a63ad"
    prepared.mkdir(parents=True)
    (prepared / "data-00000.arrow").write_bytes(b"tokens")
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump({"datasets": [{"path": str(data)}],
                                      "dataset_prepared_path": str(tmp_path / "prepared")}))
    os.utime(data, (1_000, 1_000))  # the data is older than its tokenised copy: kept
    assert drop_stale_prepared(config) is None and prepared.exists()
    os.utime(data, None)  # re-exported after tokenising: dropped
    os.utime(prepared / "data-00000.arrow", (2_000, 2_000))
    assert drop_stale_prepared(config) == tmp_path / "prepared" and not (tmp_path / "prepared").exists()
    assert drop_stale_prepared(config) is None  # nothing prepared yet
