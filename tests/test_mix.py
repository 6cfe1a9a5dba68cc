"""`distill mix`: two runs against the loopback teacher mixed by ratio and cap, counts worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_distill, write_jsonl, write_spec

from distill.mix.plan import plan_mix, sample_indices
from pipelines.spec import SpecError
from testing.loopback.teacher import LoopbackTeacher

ALPHA = [{"question": f"What is {i}+1?", "answer": str(i + 1)} for i in range(6)]  # every sample right
BETA = [{"question": f"What is {i}*3?", "answer": str(i * 3)} for i in range(2, 6)]  # one of two samples right


def responder(messages: list[dict[str, str]], index: int) -> str:
    question = messages[-1]["content"]
    a, op, _ = question.removeprefix("What is ").rstrip("?").partition("+" if "+" in question else "*")
    right = int(a) + 1 if op == "+" else int(a) * 3
    answer = right if op == "+" or index == 0 else right + 1
    return f"<thought>Compute it.{' Again.' * index}</thought> \\boxed{{{answer}}}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("mix")
    out = []
    with LoopbackTeacher(responder) as teacher:
        for name, rows in (("alpha", ALPHA), ("beta", BETA)):
            spec = write_spec(tmp / f"{name}.yaml", write_jsonl(tmp / f"{name}.jsonl", rows), license="mit")
            run_distill("run", spec, "--teacher-url", teacher.base_url, "--out", tmp / name)
            out.append(tmp / name)
    return out[0], out[1]


def test_plan_by_hand() -> None:
    # 0.5/0.5 of sources with 12 and 4: the largest total both can fill is 8, 4 each
    assert [s.rows for s in plan_mix({"a": 12, "b": 4}, {"a": 1, "b": 1}, {})] == [4, 4]
    assert [s.rows for s in plan_mix({"a": 12, "b": 4}, {"a": 0.75, "b": 0.25}, {})] == [12, 4]
    assert [s.rows for s in plan_mix({"a": 12, "b": 4}, {"a": 2, "b": 1}, {}, total=5)] == [3, 2]  # 3.33 + 1.67
    assert [s.rows for s in plan_mix({"a": 12, "b": 4}, {}, {"a": 5})] == [5, 4]
    with pytest.raises(SpecError, match="--total: 20 rows"):
        plan_mix({"a": 12, "b": 4}, {"a": 1, "b": 1}, {}, total=20)
    with pytest.raises(SpecError, match="missing: b"):
        plan_mix({"a": 12, "b": 4}, {"a": 1}, {})
    assert sample_indices(10, 3, 0, "a") == sample_indices(10, 3, 0, "a") != sample_indices(10, 3, 1, "a")


def test_mix_end_to_end(runs: tuple[Path, Path], tmp_path: Path) -> None:
    alpha, beta = runs
    out = tmp_path / "mix"
    result = run_distill("mix", alpha, beta, "--ratio", "alpha=0.5", "--ratio", "beta=0.5", "--seed", "3",
                         "--out", out)
    assert "sources alpha 4/12, beta 4/4" in result.stdout
    manifest = json.loads((out / "export.json").read_text())
    sources = {s["name"]: s for s in manifest["mix"]["sources"]}
    assert (sources["alpha"]["rows"], sources["beta"]["rows"], manifest["rows"]) == (4, 4, 8)
    assert sources["alpha"]["ratio"] == 0.5 and manifest["mix"]["order"] == "curriculum"
    train = pd.read_parquet(out / "train.parquet")
    assert train.source.value_counts().to_dict() == {"alpha": 4, "beta": 4}
    assert train.problem_id.str.match(r"^(alpha|beta):\d+$").all()
    assert train.difficulty.is_monotonic_increasing  # easy to hard across both sources
    again = tmp_path / "again"
    run_distill("mix", alpha, beta, "--ratio", "alpha=0.5", "--ratio", "beta=0.5", "--seed", "3", "--out", again)
    assert pd.read_parquet(again / "train.parquet").problem_id.tolist() == train.problem_id.tolist()

    capped = tmp_path / "capped"
    run_distill("mix", alpha, beta, "--cap", "alpha=2", "--order", "source", "--out", capped)
    rows = pd.read_parquet(capped / "train.parquet")
    assert rows.source.tolist() == ["alpha"] * 2 + ["beta"] * 4

    card = tmp_path / "hub"
    run_distill("publish", out / "dataset", "--repo-id", "me/mix", "--dry-run", card)
    text = (card / "README.md").read_text()
    assert "## Mix" in text and "| `alpha` | 12 | 0.5 | - | 4 |" in text and "| `beta` | 4 | 0.5 | - | 4 |" in text


def test_mix_errors(runs: tuple[Path, Path], tmp_path: Path) -> None:
    alpha, beta = runs
    for args, message in [(["--ratio", "gamma=1"], "--ratio: unknown source 'gamma' (sources: alpha, beta)"),
                          (["--ratio", "alpha"], "--ratio: 'alpha' is not NAME=VALUE"),
                          (["--cap", "alpha=x"], "--cap: 'alpha=x': 'x' is not an integer"),
                          (["--order", "random"], "--order: 'random' is not one of")]:
        result = run_distill("mix", alpha, beta, *args, "--out", tmp_path / "x", check=False)
        assert result.returncode == 2 and result.stderr.startswith(f"error: {message}"), result.stderr
    one = run_distill("mix", alpha, "--out", tmp_path / "y", check=False)
    assert one.returncode == 2 and "at least two dataset folders" in one.stderr
