"""The lab's comparison instrument (issue 23, parts 3-4), pure and fast: the variant settings and their one-line
errors, the legacy-loss rendering, the paired 95 % interval against a hand computation, the PRM's random-subset
control, and the teacher-forced mass diagnostic on a tiny model. The comparison itself is a `distill lab run
compare` command (docs/lab.md), not a test."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from lab.compare import paired_comparison, paired_interval, t975, write_comparison
from lab.config import load_lab_config
from pipelines.spec import SpecError

VARIANT_ERRORS = [
    ({"name": "a", "method": "kd", "data": "answer_only"},
     r"students\.variants\.0: data: answer_only with method kd: the thinking teacher's targets .* use method: sft"),
    ({"name": "a", "method": "sft", "top_k": 5}, r"students\.variants\.0: top_k: 5 is a KD setting"),
    ({"name": "a", "method": "sft", "loss": "axolotl_legacy"},
     r"students\.variants\.0: loss: 'axolotl_legacy' is a KD"),
    ({"name": "a", "method": "sft", "kd_alpha": 0.5}, r"students\.variants\.0: kd_alpha: 0\.5 is a KD setting"),
    ({"name": "a", "method": "kd", "loss": "axolotl_legacy", "kd_beta": 1.0},
     r"students\.variants\.0: kd_beta: 1\.0 with loss axolotl_legacy"),
    ({"name": "a", "method": "kd", "top_k": 21}, r"students\.variants\.0\.top_k: Input should be less than or equal "
                                                  "to 20"),
    ({"name": "a", "method": "kd", "loss": "reverse"}, r"students\.variants\.0\.loss: Input should be 'topk_tail' or "
                                                       "'axolotl_legacy'"),
    ({"name": "a", "method": "kd", "kd_alpha": 1.5}, r"students\.variants\.0\.kd_alpha: Input should be less than"),
    ({"name": "a", "method": "sft", "data": "random"}, r"compare\.yaml: students\.variants: a: data 'random' needs "
                                                       "a prm: section"),
]


@pytest.mark.parametrize(("variant", "error"), VARIANT_ERRORS)
def test_variant_settings_are_refused_in_one_line_naming_the_field(variant: dict, error: str) -> None:
    with pytest.raises(SpecError, match=error) as caught:
        load_lab_config("compare", {"students.variants": [variant], "students.baseline": "a"})
    assert "\n" not in str(caught.value)


def test_the_shipped_comparison_is_the_instrument_the_issue_asks_for() -> None:
    cfg = load_lab_config("compare")
    assert len(cfg.students.seeds) >= 5 and cfg.evaluation.problems >= 200 and cfg.evaluation.num_samples >= 4
    assert cfg.generation.problems >= 1000 and cfg.diagnostic is not None
    arms = {v.name: v for v in cfg.students.variants}
    assert cfg.students.baseline == "sft" and arms["sft"].method == "sft"
    today = arms["kd-today"]
    assert (today.loss, today.top_k, today.kd_alpha) == ("axolotl_legacy", 5, 0.9)
    assert arms["kd-fwd-k20"].top_k == 20 and arms["kd-reverse-tail"].kd_beta == 1.0
    assert cfg.students.kd_alpha == 1.0 and arms["kd-fwd-k5-ce"].kd_alpha == 0.5  # pure KD vs KD + CE
    with pytest.raises(SpecError, match=r"students\.baseline: 'nope' is not a variant"):
        load_lab_config("compare", {"students.baseline": "nope"})


def test_the_legacy_loss_renders_axolotls_own_normalised_kd(tmp_path: Path) -> None:
    """`distill config kd --loss axolotl_legacy`: Axolotl's plugin and dataset type, kd_normalize_topk on, no
    plugin keys; the rules still refuse the same config when it is not asked for this way."""
    from distill.axolotl.configs import check_kd, write_configs

    export = tmp_path / "export"
    export.mkdir()
    manifest = {"format": "kd", "file_format": "jsonl", "student": "s", "files": [{"path": "train.jsonl"}],
                "kd": {"distribution": {"temperature": 1.0}}}
    (path,) = write_configs("kd", export, manifest, "s", tmp_path / "kd.yaml", smoke=True, loss="axolotl_legacy",
                            overrides={"kd_alpha": 0.9, "kd_ce_alpha": 0.1})
    text = path.read_text()
    config = yaml.safe_load(text)
    assert config["plugins"] == ["axolotl.integrations.kd.KDPlugin"] and config["kd_normalize_topk"] is True
    assert config["datasets"][0]["type"] == "axolotl.integrations.kd.chat_template"
    assert config["kd_beta"] == 0.0 and "kd_divergence" not in config and "kd_jsd_beta" not in config
    assert "[axolotl_legacy]" in text.splitlines()[1]
    with pytest.raises(SpecError, match="kd_normalize_topk: true renormalises"):
        check_kd(text)
    with pytest.raises(SpecError, match="--beta: not with --loss axolotl_legacy"):
        write_configs("kd", export, manifest, "s", tmp_path / "x.yaml", loss="axolotl_legacy", beta=0.5)


def test_paired_interval_by_hand() -> None:
    # differences 2, 4, 6, 8, 10: mean 6, sd sqrt(10) = 3.1623, t(0.975, 4) = 2.776,
    # half-width 2.776 * 3.1623 / sqrt(5) = 3.9259
    got = paired_interval([0.02, 0.04, 0.06, 0.08, 0.10])
    assert got["n"] == 5 and got["mean"] == pytest.approx(0.06) and got["sd"] == pytest.approx(math.sqrt(10) / 100)
    assert got["low"] == pytest.approx(0.06 - 0.039259, abs=1e-5)
    assert got["high"] == pytest.approx(0.06 + 0.039259, abs=1e-5)
    assert round(t975(1), 3) == 12.706 and round(t975(4), 3) == 2.776 and round(t975(10**6), 2) == 1.96
    with pytest.raises(ValueError, match="at least 2"):
        paired_interval([0.1])


def test_paired_comparison_pairs_by_seed(tmp_path: Path) -> None:
    pass1 = {"sft": {0: 0.20, 1: 0.30, 2: 0.10}, "kd": {0: 0.25, 1: 0.32, 2: 0.16}}
    comparison = paired_comparison(pass1, "sft")
    kd = comparison["arms"]["kd"]
    assert kd["difference"]["per_seed"] == pytest.approx({"0": 0.05, "1": 0.02, "2": 0.06})
    # differences 5, 2, 6: mean 4.333, sd 2.0817, t(0.975, 2) = 4.303 -> half-width 5.1716
    assert kd["difference"]["mean"] == pytest.approx(0.043333, abs=1e-6)
    assert kd["difference"]["low"] == pytest.approx(0.043333 - 0.051716, abs=1e-5)
    # kd itself: 25, 32, 16: mean 24.333, sd sqrt(128.667 / 2) = 8.0208
    assert kd["mean"] == pytest.approx(0.243333, abs=1e-6) and kd["sd"] == pytest.approx(0.080208, abs=1e-5)
    assert "difference" not in comparison["arms"]["sft"]
    diagnostics = {"kd": {"topk_mass": 0.8, "digit_mass_outside": 0.05, "teacher_topk_mass": 0.9, "top_k": 5},
                   "teacher": {"topk_mass": 0.9, "digit_mass_outside": 0.01, "teacher_topk_mass": 0.9, "top_k": 5}}
    markdown = write_comparison(pass1, "sft", tmp_path, diagnostics)
    assert "| kd | 24.3 (8.0) | +5.0, +2.0, +6.0 | +4.3 [-0.8, +9.5] | 0.800 | 0.050 |" in markdown
    assert "| sft | 20.0 (10.0) | – | – | – | – |" in markdown
    assert json.loads((tmp_path / "compare.json").read_text())["arms"]["kd"]["difference"]["n"] == 3
    assert (tmp_path / "plots" / "compare-paired.png").stat().st_size > 1000


def _traces(folder: Path, kept: list[bool]) -> Path:
    (folder / "__meta__").mkdir(parents=True)
    (folder / "__meta__" / "spec.yaml").write_text("name: x\n")
    table = pa.table({"problem_id": [f"p{i}" for i in range(len(kept))], "sample_index": [0] * len(kept),
                      "kept": kept})
    pq.write_table(table, folder / "data-00000-of-00001.parquet")
    return folder


def test_random_subset_has_the_prm_sets_size_and_is_seeded(tmp_path: Path) -> None:
    from lab.prm_stage import random_subset
    from pipelines.foreign import load_records

    kept = [i % 3 != 0 for i in range(30)]  # 20 verified of 30
    traces = _traces(tmp_path / "filtered", kept)

    def drawn(out: Path, seed: int) -> set[str]:
        report = random_subset(traces, 7, seed, out)
        assert report == {"source": str(traces), "verified": 20, "size": 7, "seed": seed}
        rows = load_records(out)
        assert len(rows) == 30  # every row, kept only on the drawn ones
        return {r["problem_id"] for r in rows if r["kept"]}

    first, again, other = drawn(tmp_path / "a", 0), drawn(tmp_path / "b", 0), drawn(tmp_path / "c", 1)
    verified = {f"p{i}" for i, k in enumerate(kept) if k}
    assert len(first) == 7 and first <= verified and first == again and first != other
    assert (tmp_path / "a" / "__meta__" / "spec.yaml").is_file()
    with pytest.raises(ValueError, match="size 21 of 20"):
        random_subset(traces, 21, 0, tmp_path / "d")


def test_the_loop_sizes_the_random_control_by_the_prm_filtered_set(tmp_path: Path) -> None:
    from lab.loop import Loop
    from pipelines.foreign import load_records

    cfg = load_lab_config("prm", {"students.variants": [{"name": "sft-prm", "method": "sft", "data": "prm"},
                                                        {"name": "sft-random", "method": "sft", "data": "random"}],
                                  "students.random_subset_seed": 3})
    traces = {"filtered": _traces(tmp_path / "filtered", [i % 3 != 0 for i in range(30)]),
              "prm": _traces(tmp_path / "prm", [i % 3 == 1 for i in range(30)])}  # the PRM passed 10 of the 20
    said: list[str] = []
    out = Loop(cfg, tmp_path / "run", echo=said.append).random_control(traces)
    drawn = [r for r in load_records(out) if r["kept"]]
    assert out == tmp_path / "run" / "traces" / "random" and len(drawn) == 10
    assert json.loads((out / "__meta__" / "random-subset.json").read_text())["seed"] == 3
    assert "10 of 20 verified traces" in said[-1]


@pytest.fixture(scope="module")
def diagnostic_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(peaked teacher, random student, export jsonl): the teacher's top 5 on a few traces, written as
    `distill export --format kd` writes scored rows."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.axolotl.kd_align import axolotl_columns, student_turn, targets_from_scores
    from distill.kd.score import TransformersScorer
    from testing.tiny_model import build_tiny_model

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("diagnostic")
    teacher = build_tiny_model(tmp / "teacher", seed=0)
    model = AutoModelForCausalLM.from_pretrained(teacher)
    with torch.no_grad():
        model.model.norm.weight.mul_(4.0)  # a peaked teacher: its top 5 hold a good share of the mass
    model.save_pretrained(teacher)
    student = build_tiny_model(tmp / "student", seed=1)
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    scorer = TransformersScorer(str(teacher))
    rows = []
    for a, b in ((12, 34), (57, 68), (90, 9)):
        messages = [{"role": "user", "content": f"{a} + {b}"},
                    {"role": "assistant", "content": f"<thought>\nadd {a} and {b}.\n</thought>\n\n\\boxed{{{a + b}}}"}]
        turn = student_turn(tokenizer, messages)
        (scores,) = scorer.score([turn.input_ids], 5)
        rows.append({"messages": messages, **axolotl_columns(targets_from_scores(turn, scores, 5, len(tokenizer)))})
    export = tmp / "train.jsonl"
    export.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return teacher, student, export


def test_teacher_as_its_own_student_puts_its_own_top_k_mass_on_the_block(
        diagnostic_export: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from lab.diagnostic import diagnose

    teacher, student, export = diagnostic_export
    report = diagnose({"teacher": teacher, "random": student}, export, 5, tmp_path / "diagnostic.json")
    own = report["teacher"]
    assert own["positions"] > 30
    assert own["topk_mass"] == pytest.approx(own["teacher_topk_mass"], abs=1e-4)
    assert 0.1 < own["topk_mass"] < 0.99  # peaked, with a tail: the check is not trivially 1 or k/V
    # the teacher is its own optimum over the k + 1 outcomes: both divergences 0, its argmax the teacher's
    assert own["forward_kl"] < 1e-4 and own["reverse_kl"] < 1e-4 and own["reverse_kl_over_0.1"] == 0
    assert own["top1_agree"] == 1.0 and own["teacher_top1_mass"] > own["topk_mass"] / 5
    from transformers import AutoTokenizer

    from lab.diagnostic import digit_token_ids

    tokenizer = AutoTokenizer.from_pretrained(teacher)
    vocab, digits = len(tokenizer), len(digit_token_ids(tokenizer))
    random = report["random"]
    assert random["topk_mass"] == pytest.approx(5 / vocab, rel=0.5)  # a random init: about k/V
    assert random["digit_mass_outside"] == pytest.approx(digits / vocab, rel=0.5)  # few digits in the top 5
    assert json.loads((tmp_path / "diagnostic.json").read_text())["random"]["top_k"] == 5
    # a random init is away from the teacher on both divergences (this random teacher is flat: its tail holds 0.85,
    # so neither is large), and puts little mass on the teacher's most likely token
    assert random["forward_kl"] > 0.1 and random["reverse_kl"] > 0.05 and random["reverse_kl_over_0.1"] > 0.25
    assert random["teacher_top1_mass"] < 0.05
    # a training export (parquet) reads as the diagnostic's jsonl
    parquet = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist([json.loads(line) for line in export.read_text().splitlines()]), parquet)
    again = diagnose({"teacher": teacher}, parquet, 5, tmp_path / "again.json")["teacher"]
    assert again == {**own, "top_k": 5}


def test_the_diagnostic_refuses_a_k_above_the_exports(diagnostic_export: tuple[Path, Path, Path]) -> None:
    from transformers import AutoTokenizer

    from lab.diagnostic import digit_token_ids, traces_from_export

    teacher, _, export = diagnostic_export
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    digits = [tokenizer.decode([i]).strip() for i in digit_token_ids(tokenizer)]
    assert set(digits) == set("0123456789")  # "7" and " 7" alike: a digit token with or without its space
    with pytest.raises(ValueError, match="top 5, fewer than k = 6"):
        traces_from_export(export, tokenizer, 6)


def test_the_onpolicy_table_skips_unevaluated_rounds_and_pairs_the_last(tmp_path: Path) -> None:
    """Rounds evaluated every 2nd: rows for 0, 2 and 3 only; the teacher budget is cumulative; the last round is
    paired per seed against the off-policy arm."""
    from lab.loop import onpolicy_table

    def history(start: float, step: float, scored: int) -> list[dict[str, Any]]:
        return [{"round": 0, "pass@1": start}] + [
            {"round": r, "teacher_scored_targets": scored, **({"pass@1": start + r * step} if r in (2, 3) else {})}
            for r in (1, 2, 3)]

    histories = {("onpolicy", s): history(0.5 + s / 100, 0.04, 100) for s in range(3)}
    histories |= {("offpolicy", s): history(0.5 + s / 100, 0.01 * (s + 1), 110) for s in range(3)}
    table = onpolicy_table(histories, ["onpolicy", "offpolicy"], [0, 1, 2], tmp_path / "rounds.png")
    rows = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split(" | ")[0] for row in rows] == ["| 0", "| 2", "| 3"]
    assert rows[1].endswith("| 200 | 220 |") and rows[2].endswith("| 300 | 330 |")
    comparison = json.loads((tmp_path / "compare.json").read_text())
    differences = comparison["arms"]["onpolicy"]["difference"]["per_seed"]
    assert comparison["baseline"] == "offpolicy"
    assert [round(100 * d, 6) for d in differences.values()] == [9.0, 6.0, 3.0]  # 3 x (0.04 - 0.01 (s + 1))
    assert (tmp_path / "rounds.png").exists() and (tmp_path / "plots" / "compare-paired.png").exists()


@pytest.mark.parametrize("config", sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "lab" / "configs")
                                          .glob("*.yaml")))
def test_every_shipped_lab_config_loads(config: str) -> None:
    """`distill lab run NAME` for each lab/configs/NAME.yaml gets past its settings (the runs are commands)."""
    cfg = load_lab_config(config)
    assert cfg.name == config and cfg.students.variants
