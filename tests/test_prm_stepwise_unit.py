"""The stepwise PRM style's pure parts: the encoder (Axolotl's stepwise_supervised ids and label positions), the
labels.jsonl → boolean file conversion, the TRL rows in prm-eval, and the one-line errors. Seconds, no Axolotl
(tests/test_prm_train.py compares the encoder with Axolotl's own strategy and trains a PRM)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipelines.spec import DatasetSpec, PrmConfig, SpecError
from prm.backend_transformers import check_token_classifier
from prm.backend_vllm import server_args
from prm.encode import encode_stepwise, encode_trace
from prm.evaluate import first_false, load_labelled
from prm.scorer import PrmScorer
from prm.stepwise_data import read_labels, write_stepwise


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import AutoTokenizer

    from testing.tiny_model import build_tokenizer

    path = tmp_path_factory.mktemp("tok")
    build_tokenizer(path)
    return AutoTokenizer.from_pretrained(path)


def pieces(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_ids_are_the_pieces_tokenised_alone_and_labels_sit_on_each_separator(tokenizer: Any) -> None:
    problem, steps = "What is 3 + 4?", ["3 + 4 = 7.", "so 7."]
    trace = encode_stepwise(tokenizer, problem, steps, "\n")
    sep = pieces(tokenizer, "\n")
    expected = pieces(tokenizer, problem) + pieces(tokenizer, steps[0]) + sep + pieces(tokenizer, steps[1]) + sep
    assert trace.input_ids == expected
    first = len(pieces(tokenizer, problem)) + len(pieces(tokenizer, steps[0])) + len(sep) - 1
    assert trace.positions == [first, len(expected) - 1]
    assert [trace.input_ids[p] for p in trace.positions] == [sep[-1], sep[-1]]
    assert trace.text == problem + "3 + 4 = 7.\nso 7.\n"  # nothing between the problem and the first step
    assert encode_trace(tokenizer, PrmConfig(model="m", style="stepwise"), problem, steps) == trace
    # the pieces are not the joined text re-tokenised (why the vLLM backend sends ids): " " + "Step" ≠ " Step"
    split = encode_stepwise(tokenizer, "Solve: ", ["Step 1: add."], "\n")
    assert split.input_ids != pieces(tokenizer, split.text)


def test_a_separator_inside_a_step_is_not_a_step_and_steps_are_stripped(tokenizer: Any) -> None:
    trace = encode_stepwise(tokenizer, "p", ["  a\nb = 2.\n", "c\n\nd"], "\n")
    assert len(trace.positions) == 2
    assert trace.input_ids == (pieces(tokenizer, "p") + pieces(tokenizer, "a\nb = 2.") + pieces(tokenizer, "\n")
                               + pieces(tokenizer, "c\n\nd") + pieces(tokenizer, "\n"))
    assert trace.positions[-1] == len(trace.input_ids) - 1


def test_an_empty_step_gets_its_label_on_its_own_separator(tokenizer: Any) -> None:
    sep = pieces(tokenizer, " [end of step]")  # several tokens: the label is on the last
    assert len(sep) > 1
    trace = encode_stepwise(tokenizer, "p", ["x = 1.", "   ", "y"], " [end of step]")
    assert trace.positions[1] == trace.positions[0] + len(sep)
    assert trace.input_ids[trace.positions[0] + 1:trace.positions[1] + 1] == sep


def test_a_bos_goes_first_when_the_tokenizer_has_one(tokenizer: Any) -> None:
    with_bos = type(tokenizer).from_pretrained(tokenizer.name_or_path, bos_token="<|endoftext|>")
    plain = encode_stepwise(tokenizer, "p", ["a", "b"], "\n")
    trace = encode_stepwise(with_bos, "p", ["a", "b"], "\n")
    assert trace.input_ids == [with_bos.bos_token_id, *plain.input_ids]
    assert trace.positions == [p + 1 for p in plain.positions]


def test_a_separator_that_encodes_to_nothing_is_refused(tokenizer: Any) -> None:
    with pytest.raises(SpecError, match=r"prm.step_tag: the separator '' encodes to no token"):
        encode_stepwise(tokenizer, "p", ["a"], "")


class _CountingBackend:
    def __init__(self) -> None:
        self.seen: list[int] = []

    def score(self, traces: list[Any]) -> list[list[float]]:
        self.seen += [len(t.input_ids) for t in traces]
        return [[0.5] * len(t.positions) for t in traces]


def test_a_trace_over_max_tokens_is_left_unscored_not_cut(tokenizer: Any) -> None:
    cfg = PrmConfig(model="m", style="stepwise", max_tokens=64)
    backend = _CountingBackend()
    scorer = PrmScorer(cfg, backend=backend, tokenizer=tokenizer)
    long_steps = [f"{i} + 1 = {i + 1}." for i in range(40)]
    rewards = scorer.step_rewards([("p", ["a", "b"]), ("p", long_steps), ("p", [])])
    assert rewards == [[0.5, 0.5], None, None]
    assert scorer.stats.too_long == 1 and scorer.stats.no_steps == 1 and max(backend.seen) <= 64


def test_stepwise_config_defaults_and_vllm_flags(tokenizer: Any) -> None:
    spec = DatasetSpec.model_validate({"name": "x", "source": {"path": "p.jsonl"},
                                       "prm": {"model": "m", "style": "stepwise"}})
    assert spec.prm is not None and spec.prm.tag == "\n"
    assert PrmConfig(model="m", style="stepwise", step_tag="\n\n").tag == "\n\n"
    args = server_args(PrmConfig(model="m", style="stepwise"), tokenizer)
    assert args[:2] == ["--runner", "pooling"] and "--convert" not in args
    with pytest.raises(SpecError, match="step_pooling: a stepwise PRM"):
        server_args(PrmConfig(model="m", style="stepwise"), tokenizer, step_pooling=True)


def test_only_a_two_label_token_classifier_is_a_stepwise_prm() -> None:
    check_token_classifier("prm", ["Qwen2ForTokenClassification"], 2)
    with pytest.raises(SpecError, match=r"prm.model: 'lm' is Qwen2ForCausalLM, not a token classifier"):
        check_token_classifier("lm", ["Qwen2ForCausalLM"], 2)
    with pytest.raises(SpecError, match=r"prm.model: 'rm' has 1 labels; a stepwise PRM has 2"):
        check_token_classifier("rm", ["Qwen2ForTokenClassification"], 1)


def labels_file(tmp_path: Path, rows: list[dict[str, Any]]) -> Path:
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ROW = {"id": "a", "prompt": "What is 3 + 4?", "completions": ["3 + 4 = 7.", "7 * 2 = 15.", "so 15."],
       "labels": [True, True, False], "soft_labels": [1.0, 0.25, 0.0], "n_runs": 4}


def test_hard_and_soft_labels_become_booleans_next_to_labels_jsonl(tmp_path: Path) -> None:
    path = labels_file(tmp_path, [ROW, {**ROW, "id": "b", "labels": [True], "soft_labels": [0.5],
                                        "completions": ["x"]}])
    out, stats = write_stepwise(path, "hard")
    assert out == tmp_path / "stepwise-hard.jsonl"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0] == {"id": "a", "prompt": ROW["prompt"], "completions": ROW["completions"],
                       "labels": [True, True, False]}
    assert stats == {"rows": 2, "steps": 4, "positive_steps": 3, "labels": "hard"}
    soft = [r["labels"] for r in read_labels(path, "soft")]
    assert soft == [[True, False, False], [True]]  # 0.25 of the runs: not a majority; 0.5 is


@pytest.mark.parametrize("change,mode,message", [
    ({"labels": [True, False]}, "hard", r"labels.jsonl:1: `labels` has 2 entries for 3 completions"),
    ({"labels": [1, 0, 1]}, "hard", r"`labels` must be booleans"),
    ({"soft_labels": [1.0, 2.0, 0.0]}, "soft", r"`soft_labels` must be fractions in 0..1"),
    ({"soft_labels": None}, "soft", r"`soft_labels` has no entries.*use --labels hard"),
    ({"completions": []}, "hard", r"`completions` must be a non-empty list"),
    ({"prompt": ""}, "hard", r"`prompt` must be the problem text"),
])
def test_bad_label_rows_name_the_line_and_the_field(tmp_path: Path, change: dict[str, Any], mode: str,
                                                    message: str) -> None:
    with pytest.raises(SpecError, match=message):
        read_labels(labels_file(tmp_path, [{**ROW, **change}]), mode)  # type: ignore[arg-type]
    with pytest.raises(SpecError, match=r"--data: .* not found"):
        read_labels(tmp_path / "missing.jsonl", "hard")


def test_prm_eval_reads_trl_rows_with_the_first_false_label_as_the_error(tmp_path: Path) -> None:
    path = labels_file(tmp_path, [ROW, {**ROW, "id": "ok", "labels": [True, True, True]},
                                  {**ROW, "id": "cut", "completions": ["3 + 4 = 8."], "labels": [False]}])
    traces = load_labelled(path)
    assert [(t.id, t.label, t.problem) for t in traces] == [("a", 2, ROW["prompt"]), ("ok", -1, ROW["prompt"]),
                                                            ("cut", 0, ROW["prompt"])]
    assert first_false([True, False, True]) == 1
    bad = labels_file(tmp_path, [{**ROW, "labels": [True]}])
    with pytest.raises(SpecError, match=r"labels.jsonl:1: 1 labels for 3 completions"):
        load_labelled(bad)


def test_config_prm_renders_the_template_for_the_chosen_labels(tmp_path: Path) -> None:
    import yaml

    from distill.axolotl.configs import TEMPLATES_DIR, write_prm_config

    labels = labels_file(tmp_path, [ROW])
    out, stats = write_prm_config(labels, "Qwen/Qwen2.5-Math-1.5B", tmp_path / "prm.yaml", "soft", smoke=True,
                                  overrides={"max_steps": 40})
    text = out.read_text()
    config = yaml.safe_load(text)
    assert config["datasets"][0] == {"path": str((tmp_path / "stepwise-soft.jsonl").resolve()), "ds_type": "json",
                                     "split": "train", "type": "stepwise_supervised", "step_separator": "\n",
                                     "train_on_last_step_only": False}
    assert config["process_reward_model"] is True and config["num_labels"] == 2 and config["max_steps"] == 40
    assert config["output_dir"] == "out/train/prm" and config["bf16"] is False  # smoke profile
    assert "# Axolotl's PRM trainer (TRL's PRMTrainer)" in text  # the template's comments stay
    assert stats["positive_steps"] == 1 and text.startswith("# Rendered by `distill config prm`")
    other = tmp_path / "other.yaml"
    other.write_text((TEMPLATES_DIR / "prm-qwen2.5-1.5b.yaml").read_text().replace(
        "train_on_last_step_only: false", "train_on_last_step_only: true"))
    with pytest.raises(SpecError, match=r"--template: train_on_last_step_only: True would be ignored"):
        write_prm_config(labels, "m", tmp_path / "x.yaml", template=str(other))
    with pytest.raises(SpecError, match=r"--labels: 'all' is not hard or soft"):
        write_prm_config(labels, "m", tmp_path / "x.yaml", "all")
