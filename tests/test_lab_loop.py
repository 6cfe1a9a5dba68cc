"""The lab loop end to end (what `make demo` runs, smaller): a teacher that really reasons, served by the real vLLM,
its traces filtered and exported, SFT and KD students trained by the real Axolotl from one random init, and
`distill eval` of all of them on held-out problems. Learning claims with fixed seeds and wide margins, no timings.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import require_venv, run_distill

pytestmark = [pytest.mark.vllm, pytest.mark.train, pytest.mark.slow]


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    require_venv(".venv-vllm", "setup-vllm")
    require_venv(".venv-train", "setup-train")
    demo = yaml.safe_load((Path(__file__).parents[1] / "lab" / "configs" / "demo.yaml").read_text())
    config = {**demo, "name": "loop-test",
              # the demo's teacher recipe, trained once per cache (a fresh clone: ~1.5 min)
              "teacher": {**demo["teacher"], "dir": str(request.config.cache.mkdir("lab-teacher-demo"))},
              "generation": demo["generation"],  # 200 problems: with 160, SFT varied from 4 to 20 %
              # issue 16: labels from the teacher, a PRM trained by Axolotl, the PRM in the filter (lab/prm_stage.py)
              "prm": {"completions": 4, "until": "first-error", "labels": ["hard"], "filter_with": "hard",
                      "max_steps": 60, "held_out_problems": 40},
              "students": {**demo["students"], "variants": [{"name": "sft", "method": "sft"},
                                                            {"name": "kd", "method": "kd"},
                                                            {"name": "sft-prm", "method": "sft", "data": "prm"}]},
              "evaluation": {"problems": 60, "num_samples": 4, "temperature": 0.6}}
    out = tmp_path_factory.mktemp("lab")
    path = out / "loop-test.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = run_distill("lab", "run", path, "--out", out / "run", timeout=1800)
    print(result.stdout[-3000:])
    return out / "run"


def pass1(results: dict, model: str) -> float:
    run = results["runs"][model]["lab-addition"]
    return (run["clean"] or run["all"])["pass@1"]


def test_students_learn_from_the_factorys_traces(lab_run: Path) -> None:
    results = json.loads((lab_run / "eval" / "results.json").read_text())
    assert set(results["runs"]) == {"teacher", "untrained", "sft", "kd", "sft-prm"}
    scores = {model: pass1(results, model) for model in results["runs"]}
    print("held-out pass@1:", json.dumps(scores))
    assert scores["teacher"] > 0.6
    assert scores["untrained"] < 0.02  # a random init writes no sums
    # the SFT student learned to add from the teacher's filtered traces: it gets sums right, a random init never
    # does (seen: 4 to 27 % over seeds and runs of this size; the spread over seeds is in docs/lab.md)
    assert scores["sft"] > scores["untrained"] == 0.0
    # both learned the teacher's way of working: the format (a random init writes it ~1 % of the time) and chains
    # close to the teacher's; accuracy differences between recipes are measured in docs/lab.md (5 paired seeds),
    # not asserted from one seed here
    for model in ("sft", "kd"):
        head = results["runs"][model]["lab-addition"]["all"]
        untrained = results["runs"]["untrained"]["lab-addition"]["all"]
        assert head["format_adherence"] > 0.8 > 0.1 > untrained["format_adherence"], model
        assert head["chain_rouge_l"] > 0.5 > 0.1 > (untrained["chain_rouge_l"] or 0), model
    assert results["sets"]["lab-addition"]["leakage"]["count"] == 0  # held-out problems never in the train split


def test_the_loop_leaves_every_stage_a_user_can_open(lab_run: Path) -> None:
    stats = json.loads((lab_run / "traces" / "filtered" / "__meta__" / "stats.json").read_text())
    assert stats["samples"] == 200 * 4 and 0 < stats["kept"] < stats["samples"]  # some traces are wrong
    assert stats["reasons"].get("incorrect", 0) > 0
    sft = json.loads((lab_run / "exports" / "sft-filtered" / "export.json").read_text())
    kd = json.loads((lab_run / "exports" / "kd-filtered" / "export.json").read_text())
    assert sft["rows"] == kd["rows"] == stats["kept"]
    assert kd["kd"]["targets"]["scored"] == kd["rows"]  # the teacher scored the student's exact tokens
    for name in ("sft", "kd"):
        config = yaml.safe_load((lab_run / "configs" / f"{name}.yaml").read_text())
        assert config["base_model"] == str(lab_run / "students" / "init-s0")  # one random init for both
        assert config["max_steps"] == 1000
        assert (lab_run / "students" / name / "model.safetensors").exists()
    report = (lab_run / "eval" / "report.md").read_text()
    for model in ("teacher", "untrained", "sft", "kd"):
        assert f"| {model} |" in report
    assert list((lab_run / "eval" / "plots").glob("*.png"))
    summary = (lab_run / "eval" / "lab-summary.md").read_text()
    assert "| kd |" in summary and "| sft-prm |" in summary and "PRM (issue 16)" in summary


def test_the_prm_stage_labels_trains_evaluates_and_filters(lab_run: Path) -> None:
    from lab.prm_stage import label_quality
    from pipelines.foreign import load_records

    labels = lab_run / "prm" / "labels"
    stats = json.loads((labels / "stats.json").read_text())
    assert 0 < stats["steps_positive"] < stats["steps_labelled"] and stats["rounds"][0]["round"] == "step-0"
    # the Monte Carlo labels find the true first wrong step far better than a labeller that calls every step
    # good (F1 0): seen 0.60 with 2 completions a step, 0.74 with 8
    assert label_quality(labels / "labels.jsonl")["hard"]["f1"] > 0.4
    held_out = [json.loads(line) for line in (lab_run / "prm" / "held-out" / "labelled.jsonl").read_text().splitlines()]
    assert any(r["label"] == -1 for r in held_out) and any(r["label"] >= 0 for r in held_out)
    report = json.loads((lab_run / "prm" / "prm-hard-eval.json").read_text())
    assert report["style"] == "stepwise" and report["n_erroneous"] > 0 and 0.0 <= report["f1"] <= 1.0
    prm_config = json.loads((lab_run / "prm" / "prm-hard" / "config.json").read_text())
    assert prm_config["architectures"][0].endswith("ForTokenClassification")  # a token classifier, not an LM
    verified = [r for r in load_records(lab_run / "traces" / "filtered") if r["kept"]]
    passed = [r for r in load_records(lab_run / "traces" / "prm") if r["kept"]]
    assert passed and len(passed) <= len(verified)
    assert all(r["step_scores"] is not None for r in passed)
    export = json.loads((lab_run / "exports" / "sft-prm" / "export.json").read_text())
    assert export["rows"] == len(passed)


def test_the_viewer_serves_every_stage_of_the_run(lab_run: Path) -> None:
    """Issue 25: `distill view` on a lab run (what `make view DIR=out/demo` does after `make demo`) lists every
    stage's dataset and the eval, and serves each one's table, summary and a sample, and the eval's report."""
    import re
    import signal
    import subprocess
    import urllib.parse
    import urllib.request

    from conftest import DISTILL, ROOT

    from pipelines.foreign import load_records

    process = subprocess.Popen([*DISTILL, "view", str(lab_run), "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
        assert url, line

        def get(path: str, **query: str) -> str:
            with urllib.request.urlopen(url.group(1) + path + "?" + urllib.parse.urlencode(query), timeout=60) as r:
                assert r.status == 200, (path, query)
                return r.read().decode()

        index = get("")
        stages = sorted(str(d.relative_to(lab_run)) for d in (lab_run / "traces").iterdir()
                        if any(d.glob("data-*.parquet")))
        assert {"traces/filtered", "traces/prm"} <= set(stages), stages
        for rel in [*stages, "eval"]:
            assert f"at={urllib.parse.quote(rel, safe='')}" in index or f"at={rel}" in index, rel
        for rel in stages:
            records = load_records(lab_run / rel)
            stats = json.loads((lab_run / rel / "__meta__" / "stats.json").read_text())
            assert f"{len(records)}" in get("table", at=rel), rel
            assert re.search(rf"<strong>{stats['samples']}</strong> samples.*{stats['kept']} kept",
                             get("summary", at=rel), re.S), rel
            first = next(r for r in records if r["kept"])
            sample = get("sample", at=rel, pid=str(first["problem_id"]), s=str(first["sample_index"]))
            assert first["problem"].split()[-1] in sample, rel
        report = get("eval", at="eval")
        for model in ("teacher", "untrained", "sft", "kd"):
            assert model in report
        plot = re.search(r"/plot\?[^\"']+", report)
        assert plot, "the eval page shows no plot"
        with urllib.request.urlopen(url.group(1) + plot.group(0).lstrip("/").replace("&amp;", "&"),
                                    timeout=60) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("image/")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
