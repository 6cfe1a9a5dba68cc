"""`distill publish` keeps the machine's context off the public page: local paths become file names, server URLs
and key variables are removed (spec, stats, card and rows); `--keep-local-paths` opts out."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import yaml
from conftest import run_distill

from distill.publish.redact import local_name, redact_spec
from pipelines.store import finalize, meta_dir, write_part


def _spec_text(home: Path) -> str:
    return f"""name: private-run
license: mit
source: {{path: {home}/data/problems.jsonl, problem_field: question}}
teacher: {{backend: openai, model: {home}/models/r1-7b, base_url: ["http://gpu-node-17.internal:8000/v1",
          "https://10.1.2.3:8443/v1"], api_key_env: ACME_TEACHER_KEY, num_samples: 1}}
prm: {{model: {home}/models/prm, backend: vllm, base_url: "http://prm-box.lan:8001", threshold: 0.4}}
decontamination: {{benchmarks: [{{path: {home}/bench/math500.jsonl, name: MATH-500}}]}}
"""


def _dataset(tmp_path: Path) -> tuple[Path, Path, str]:
    home = tmp_path / "home" / "ana"
    records = [{"problem_id": str(i), "problem_index": i, "sample_index": 0, "problem": f"What is {i} + 1?",
                "gold": str(i + 1), "thought": "Add one.", "answer": f"\\boxed{{{i + 1}}}", "kept": True,
                "rejection_reason": None, "completion_tokens": 5 + i, "teacher_model": f"{home}/models/r1-7b",
                "pass_rate": 1.0, "messages": [{"role": "user", "content": f"What is {i} + 1?"},
                                               {"role": "assistant", "content": "<thought>Add one.</thought>"}]}
               for i in range(4)]
    cache, out = tmp_path / "cache", tmp_path / "out"
    write_part(cache, records)
    finalize(cache, out, rows_per_file=10, run_info={
        "spec": "private-run", "teacher_model": f"{home}/models/r1-7b", "verification": "math",
        "prm": {"model": f"{home}/models/prm", "style": "math-shepherd", "backend": "vllm", "threshold": 0.4}})
    text = _spec_text(home)
    (meta_dir(out) / "spec.yaml").write_text(text)
    return out, home, text


def _local_context(spec_text: str, home: Path) -> list[str]:
    """Every absolute path and URL host the spec names, the key variable, and the home folder."""
    spec = yaml.safe_load(spec_text)
    paths = [spec["source"]["path"], spec["teacher"]["model"], spec["prm"]["model"],
             spec["decontamination"]["benchmarks"][0]["path"]]
    hosts = re.findall(r"https?://([^:/\"]+)", spec_text)
    assert len(hosts) == 3 and all(p.startswith("/") for p in paths)
    return [*paths, *hosts, "ACME_TEACHER_KEY", str(home), "/home/"]


def _leaks(folder: Path, needles: list[str]) -> list[str]:
    return [f"{p.relative_to(folder)}: {n}" for p in folder.rglob("*") if p.is_file()
            for n in needles if n.encode() in p.read_bytes()]


def test_no_local_path_or_url_host_reaches_the_uploaded_folder(tmp_path: Path):
    dataset, home, text = _dataset(tmp_path)
    folder = tmp_path / "hub"
    run_distill("publish", dataset, "--repo-id", "ana/traces", "--dry-run", folder)
    assert _leaks(folder, _local_context(text, home)) == []
    published = yaml.safe_load((folder / "spec.yaml").read_text())
    assert published["source"]["path"] == "problems.jsonl"
    assert published["teacher"] == {"backend": "openai", "model": "r1-7b", "num_samples": 1}
    assert published["prm"] == {"model": "prm", "backend": "vllm", "threshold": 0.4}
    assert published["decontamination"]["benchmarks"] == [{"path": "math500.jsonl", "name": "MATH-500"}]
    card = (folder / "README.md").read_text()
    assert "Problems from `problems.jsonl`" in card and "| teacher model | `r1-7b` |" in card
    assert (folder / "spec.yaml").read_text() in card and "server URLs and key variables removed" in card
    assert set(pd.read_parquet(folder / "data" / "default").teacher_model) == {"r1-7b"}


def test_keep_local_paths_publishes_them_as_they_are(tmp_path: Path):
    dataset, home, text = _dataset(tmp_path)
    folder = tmp_path / "hub"
    run_distill("publish", dataset, "--repo-id", "ana/traces", "--dry-run", folder, "--keep-local-paths")
    assert (folder / "spec.yaml").read_text() == text
    assert "gpu-node-17.internal" in (folder / "README.md").read_text()
    assert set(pd.read_parquet(folder / "data" / "default").teacher_model) == {f"{home}/models/r1-7b"}


def test_what_counts_as_a_local_path():
    assert local_name("/home/ana/models/r1-7b/") == "r1-7b"
    assert local_name("~/data/x.jsonl") == "x.jsonl" and local_name("./x.parquet") == "x.parquet"
    assert local_name("Qwen/Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct"  # a Hub id stays
    assert local_name("openai/gsm8k") == "openai/gsm8k" and local_name(None) is None
    assert redact_spec("") == "" and redact_spec("not: [valid") == ""


def test_a_mix_spec_is_redacted_in_each_source_spec_it_nests():
    """`distill mix` writes each source folder's spec under ``mix``: those are redacted too."""
    source = yaml.safe_load(_spec_text(Path("/home/ana")))
    mixed = {"name": "mix-a-b", "mix": [{"name": "a", "path": "/home/ana/out/a", "spec": source},
                                        {"name": "b", "path": "out/b", "spec": dict(source)}]}
    text = redact_spec(yaml.safe_dump(mixed))
    assert "base_url" not in text and "ACME_TEACHER_KEY" not in text and "/home/ana" not in text
    assert yaml.safe_load(text)["mix"][0]["spec"]["source"]["path"] == "problems.jsonl"
