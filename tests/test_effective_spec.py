"""The run's record is the effective spec: what the run used, the command line's overrides included.

``distill run SPEC --teacher-model X --num-samples N`` must leave X and N (not the file's values) in
``__meta__/spec.yaml``, in the published card's "Spec used" and in ``distill export``'s manifest, with no key.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from conftest import run_distill, write_jsonl, write_spec

from pipelines.spec import DatasetSpec, dump_spec, load_spec, shipped_specs
from testing.loopback.teacher import LoopbackTeacher

SECRET = "sk-effective-spec-0123456789"


def _sum(messages: list[dict[str, str]], index: int) -> str:
    a, b = map(int, re.findall(r"\d+", messages[-1]["content"])[:2])
    return f"<thought>Add them.\n\nThat makes {a + b}.</thought>\\boxed{{{a + b}}}"


def test_every_shipped_spec_dumps_to_yaml_that_loads_back_the_same() -> None:
    for path in shipped_specs():
        spec, _ = load_spec(str(path))
        assert DatasetSpec.model_validate(yaml.safe_load(dump_spec(spec))) == spec, path.name


def test_overrides_reach_spec_yaml_the_card_and_the_export(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "p.jsonl", [{"question": f"What is {i} + 2?", "answer": str(i + 2)}
                                                for i in range(3)])
    spec = write_spec(tmp_path / "sums.yaml", source, license="mit",
                      teacher={"model": "file-teacher", "num_samples": 2, "api_key_env": "SUMS_KEY"})
    out = tmp_path / "out"
    with LoopbackTeacher(_sum, model="flag-teacher") as teacher:
        run_distill("run", spec, "--out", out, "--teacher-url", teacher.base_url, "--teacher-model", "flag-teacher",
                    "--num-samples", "3", env={"SUMS_KEY": SECRET})
        assert {body["n"] for body in teacher.requests} == {3} and teacher.requests[0]["model"] == "flag-teacher"

    text = (out / "__meta__" / "spec.yaml").read_text()
    used = DatasetSpec.model_validate(yaml.safe_load(text))
    assert (used.teacher.model, used.teacher.num_samples, used.teacher.base_url) == (
        "flag-teacher", 3, teacher.base_url)
    assert used.teacher.api_key_env == "SUMS_KEY" and SECRET not in text and "file-teacher" not in text
    stats = json.loads((out / "__meta__" / "stats.json").read_text())
    assert (stats["teacher_model"], stats["num_samples"]) == ("flag-teacher", 3)

    dry = tmp_path / "dry"
    run_distill("publish", out, "--repo-id", "me/sums", "--dry-run", dry)
    card = (dry / "README.md").read_text()
    spec_used = card[card.index("## Spec used"):]
    shown = yaml.safe_load(spec_used.split("```yaml\n", 1)[1].split("\n```", 1)[0])
    assert (shown["teacher"]["model"], shown["teacher"]["num_samples"]) == ("flag-teacher", 3)
    assert "file-teacher" not in card and "SUMS_KEY" not in card and SECRET not in card

    exported = tmp_path / "export"
    run_distill("export", out, "--format", "sft", "--out", exported)
    manifest = json.loads((exported / "export.json").read_text())
    assert (manifest["teacher_model"], manifest["teacher_num_samples"]) == ("flag-teacher", 3)
