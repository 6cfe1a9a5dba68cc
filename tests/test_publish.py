"""`distill publish` end to end: a real run (dedupe + decontamination), the dry-run folder, and a push through
the real huggingface_hub client to a loopback Hub that records the calls and answers errors."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import run_distill, write_jsonl, write_spec

from distill.publish.redact import redact_spec
from testing.loopback.hub import LoopbackHub
from testing.loopback.teacher import LoopbackTeacher

TOKEN = "hf_loopbackSecretToken1234567890"
REPO = "tester/gsm-traces"
PLANTED = ("Convert the point $(0,3)$ in rectangular coordinates to polar coordinates. Enter your answer in the "
           "form $(r,\\theta),$ where $r > 0$ and $0 \\le \\theta < 2 \\pi.$")
NEAR_BASE = ("A farmer has 17 sheep and buys 5 more every week. After 6 weeks he sells half of his sheep at the "
             "market. How many sheep does the farmer have left?")
NEAR_DUP = NEAR_BASE.replace("have left?", "have left now?")
PROBLEMS = [
    (NEAR_BASE, "#### 23"),
    ("Lena has 7 red pencils and 9 blue pencils. How many pencils does she have in total?", "#### 16"),
    (PLANTED, "#### (3, pi/2)"),
    ("A baker fills 6 trays with 8 muffins on each tray. How many muffins are on the trays?", "#### 48"),
    (NEAR_DUP, "#### 23"),
    ("Omar had 50 stickers and gave 18 of them to his sister. How many stickers are left?", "#### 32"),
    ("A pack of 4 batteries costs $3. How many dollars do 20 batteries cost?", "#### 15"),
    ("Mia reads 12 pages a day. How many pages does she read in 5 days?", "#### 60"),
    ("A train travels 60 km each hour. How far does it go in 3 hours, in km?", "#### 180"),
]
ANSWERS = {q: a.split("####")[1].strip() for q, a in PROBLEMS}


def responder(messages: list[dict[str, str]], index: int) -> str:
    problem = messages[-1]["content"]
    answer = ANSWERS.get(problem, "0")
    steps = "\n\n".join(f"Step {i}: work on it." for i in range(1 + len(problem) % 4 + index))
    if index == 1 and len(problem) % 2:  # some second samples are wrong: `incorrect` rejections
        answer = "999"
    if index == 1 and "trays" in problem:  # one sample without a thought: `no_thought`
        return f"The answer is \\boxed{{{answer}}}"
    return f"<thought>{steps}</thought>\nThe answer is \\boxed{{{answer}}}."


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _hub_env(hub: LoopbackHub | None, tmp: Path, token: str | None = TOKEN, endpoint: str | None = None) -> dict:
    """run_distill layers this over os.environ: offline off, this endpoint, an empty HF_HOME (no saved login)."""
    return {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": endpoint or (hub.endpoint if hub else "http://127.0.0.1:9"),
            "HF_HOME": str(tmp / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1", "HF_TOKEN": token or ""}


def _no_token_anywhere(*texts: str, folder: Path | None = None) -> None:
    for text in texts:
        assert TOKEN not in text and TOKEN[3:] not in text
    for path in (folder.rglob("*") if folder else []):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished `distill run` folder with logprobs, a planted benchmark problem and a near duplicate."""
    tmp = tmp_path_factory.mktemp("publish")
    source = write_jsonl(tmp / "problems.jsonl", [{"question": q, "answer": a} for q, a in PROBLEMS])
    write_jsonl(tmp / "math500.jsonl", [{"problem": PLANTED, "answer": "(3, pi/2)"},
                                         {"problem": "What is the smallest prime greater than 100?", "answer": "101"}])
    spec = write_spec(tmp / "gsm-publish.yaml", source, license="mit",
                      teacher={"top_logprobs": 2, "num_samples": 2},
                      dedupe={"near_threshold": 0.8},
                      decontamination={"benchmarks": [{"path": "math500.jsonl", "name": "MATH-500"}], "ngram": 8})
    out = tmp / "out"
    with LoopbackTeacher(responder) as teacher:
        run_distill("run", spec, "--teacher-url", teacher.base_url, "--out", out)
    return out


def test_run_filters_planted_and_near_duplicate(dataset: Path) -> None:
    stats = json.loads((dataset / "__meta__" / "stats.json").read_text())
    decontam, dedupe = stats["decontamination"], stats["dedupe"]
    assert decontam["contaminated"] == 1 and decontam["dropped"][0]["problem_id"] == "2"
    assert decontam["dropped"][0]["benchmark"] == "MATH-500"
    assert (dedupe["near"], dedupe["exact"]) == (1, 0)
    assert dedupe["dropped"][0]["problem_id"] == "4" and dedupe["dropped"][0]["duplicate_of"] == "0"
    problems = set(pq.read_table(dataset, columns=["problem"]).column(0).to_pylist())
    assert PLANTED not in problems and NEAR_DUP not in problems and NEAR_BASE in problems
    assert stats["problems"] == len(PROBLEMS) - 2
    assert stats["kept"] > 0 and stats["rejected"] > 0


def test_resumed_run_drops_the_same_problems(dataset: Path, tmp_path: Path) -> None:
    copy = tmp_path / "out"
    shutil.copytree(dataset, copy)
    (copy / ".cache" / "filters.json").unlink()  # the rerun must find the same problems to drop by itself
    first = json.loads((dataset / "__meta__" / "stats.json").read_text())
    run_distill("run", dataset.parent / "gsm-publish.yaml", "--out", copy)  # all done: no teacher needed
    again = json.loads((copy / "__meta__" / "stats.json").read_text())
    assert again["runs"] == first["runs"] + 1
    for key in ("dedupe", "decontamination", "reasons", "kept", "problems"):
        assert again[key] == first[key], key


def test_dry_run_folder_loads_and_card_holds_the_stats(dataset: Path, tmp_path: Path) -> None:
    from datasets import load_dataset
    from huggingface_hub import DatasetCard

    before = _snapshot(dataset)
    folder = tmp_path / "dry"
    result = run_distill("publish", dataset, "--repo-id", REPO, "--dry-run", folder, env=_hub_env(None, tmp_path))
    assert "nothing uploaded" in result.stdout
    _no_token_anywhere(result.stdout, result.stderr, folder=folder)
    assert _snapshot(dataset) == before
    stats = json.loads((dataset / "__meta__" / "stats.json").read_text())

    default = load_dataset(str(folder), "default", split="train")
    assert len(default) == stats["kept"]
    assert all(m[-1]["role"] == "assistant" and "<thought>" in m[-1]["content"] for m in default["messages"])
    kd = load_dataset(str(folder), "kd", split="train")
    assert len(kd) == stats["kept"] and all(len(lp) > 0 for lp in kd["logprobs"])
    stages = [load_dataset(str(folder), f"curriculum_stage{k}", split="train") for k in (1, 2)]
    assert sum(len(s) for s in stages) == stats["kept"] and all(len(s) for s in stages)
    assert min(stages[0]["pass_rate"]) >= 0.75  # stage 1: easy problems, short traces
    assert max(stages[0]["completion_tokens"]) <= sorted(default["completion_tokens"])[len(default) // 2 - 1]

    card_text = (folder / "README.md").read_text()
    card = DatasetCard(card_text)
    assert card.data.license == "mit"
    assert [c["config_name"] for c in card.data.configs][:2] == ["default", "kd"]
    for reason, count in stats["reasons"].items():
        assert re.search(rf"\| `{reason}` \| {count} \|", card_text), reason
    assert f"{stats['pass_rate']:.2%}" in card_text
    for key, value in stats["tokens"].items():
        assert f"| {key} | {value} |" in card_text
    assert "MATH-500" in card_text and "`2`" in card_text  # the dropped problem is listed
    assert "**1** exact" not in card_text and "**1** near" in card_text
    assert (folder / "spec.yaml").read_text() in card_text  # the spec, with local context removed (redact.py)
    assert (folder / "spec.yaml").read_text() == redact_spec((dataset / "__meta__" / "spec.yaml").read_text())
    assert "path: problems.jsonl" in card_text and "base_url" not in card_text
    assert "loopback-teacher" in card_text and "![Trace lengths](trace_lengths.png)" in card_text
    assert (folder / "trace_lengths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_push_uploads_exactly_the_dry_run_folder(dataset: Path, tmp_path: Path) -> None:
    dry = tmp_path / "dry"
    run_distill("publish", dataset, "--repo-id", REPO, "--dry-run", dry, env=_hub_env(None, tmp_path))
    with LoopbackHub(token=TOKEN) as hub:
        result = run_distill("publish", dataset, "--repo-id", REPO, "--private", env=_hub_env(hub, tmp_path))
    _no_token_anywhere(result.stdout, result.stderr)
    assert f"published {REPO}" in result.stdout and "/commit/" in result.stdout
    repo = hub.repos[REPO]
    assert repo.type == "dataset" and repo.private and len(repo.commits) == 1
    expected = {str(p.relative_to(dry)): p.read_bytes() for p in dry.rglob("*") if p.is_file()}
    assert repo.files == expected
    assert not [name for name, data in repo.files.items() if TOKEN.encode() in data]
    assert [c.endpoint for c in hub.calls if c.endpoint != "unknown"] == ["create", "validate-yaml", "preupload",
                                                                        "commit"]
    assert all(c.authorized for c in hub.calls if c.endpoint != "unknown")


def test_push_through_the_lfs_protocol(dataset: Path, tmp_path: Path) -> None:
    """Parquet and PNG as LFS objects (batch API + PUT), as the Hub stores them when Xet is off."""
    dry = tmp_path / "dry"
    run_distill("publish", dataset, "--repo-id", REPO, "--dry-run", dry, env=_hub_env(None, tmp_path))
    with LoopbackHub(token=TOKEN, lfs_suffixes=(".parquet", ".png")) as hub:
        run_distill("publish", dataset, "--repo-id", REPO, env={**_hub_env(hub, tmp_path), "HF_HUB_DISABLE_XET": "1"})
    expected = {str(p.relative_to(dry)): p.read_bytes() for p in dry.rglob("*") if p.is_file()}
    assert hub.repos[REPO].files == expected
    lfs_files = [name for name in expected if name.endswith((".parquet", ".png"))]
    assert len(hub.calls_to("lfs-upload")) == len(lfs_files) == len(hub.lfs_objects)
    assert hub.calls_to("lfs-batch") and all(c.authorized for c in hub.calls_to("lfs-batch"))


def _publish_error(dataset: Path, tmp_path: Path, env: dict) -> str:
    before = _snapshot(dataset)
    result = run_distill("publish", dataset, "--repo-id", REPO, "--retry-wait", "0.05", env=env, check=False)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    _no_token_anywhere(result.stdout, result.stderr)
    assert _snapshot(dataset) == before
    return errors[0]


@pytest.mark.parametrize("status, expected", [
    (401, "authentication failed (401)"),
    (403, f"permission denied (403) for dataset {REPO}"),
])
def test_auth_errors_are_one_line_without_the_token(dataset: Path, tmp_path: Path, status: int,
                                                    expected: str) -> None:
    with LoopbackHub(token=TOKEN) as hub:
        hub.fail("create", status, times=5, message=f"token {TOKEN} rejected")
        line = _publish_error(dataset, tmp_path, _hub_env(hub, tmp_path))
    assert expected in line and "***" in line
    assert len(hub.calls_to("create")) == 1  # not retried
    assert not hub.calls_to("commit")


def test_wrong_token_is_refused_by_the_hub(dataset: Path, tmp_path: Path) -> None:
    with LoopbackHub(token="hf_another_token") as hub:
        line = _publish_error(dataset, tmp_path, _hub_env(hub, tmp_path))
    assert "authentication failed (401)" in line and "HF_TOKEN" in line


def test_repo_of_another_type_is_one_line(dataset: Path, tmp_path: Path) -> None:
    with LoopbackHub(token=TOKEN) as hub:
        hub.add_repo(REPO, repo_type="model")
        line = _publish_error(dataset, tmp_path, _hub_env(hub, tmp_path))
    assert f"{REPO} already exists as a model repo, not a dataset" in line
    assert not hub.calls_to("commit")


def test_existing_dataset_repo_is_updated(dataset: Path, tmp_path: Path) -> None:
    with LoopbackHub(token=TOKEN) as hub:
        hub.add_repo(REPO, files={"old.txt": b"old"})
        run_distill("publish", dataset, "--repo-id", REPO, env=_hub_env(hub, tmp_path))
    assert "old.txt" in hub.repos[REPO].files and "data/default/train-00000-of-00001.parquet" in hub.repos[REPO].files


def test_transient_error_is_retried(dataset: Path, tmp_path: Path) -> None:
    with LoopbackHub(token=TOKEN) as hub:
        hub.fail("create", 503, times=1)
        result = run_distill("publish", dataset, "--repo-id", REPO, "--retry-wait", "0.05",
                             env=_hub_env(hub, tmp_path))
    assert "retrying" in result.stderr and f"published {REPO}" in result.stdout
    assert [c.status for c in hub.calls_to("create")] == [503, 200]
    assert len(hub.repos[REPO].commits) == 1


def test_persistent_server_error_gives_up_after_retries(dataset: Path, tmp_path: Path) -> None:
    with LoopbackHub(token=TOKEN) as hub:
        hub.fail("create", 500, times=10, message=f"internal error near {TOKEN}")
        line = _publish_error(dataset, tmp_path, _hub_env(hub, tmp_path))
    assert "the Hub answered 500" in line
    assert len(hub.calls_to("create")) == 3


def test_network_error_is_one_line(dataset: Path, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    line = _publish_error(dataset, tmp_path, _hub_env(None, tmp_path, endpoint=f"http://127.0.0.1:{port}"))
    assert "cannot reach the Hub" in line and "ConnectError" in line


def test_missing_token_and_bad_arguments(dataset: Path, tmp_path: Path) -> None:
    line = _publish_error(dataset, tmp_path, _hub_env(None, tmp_path, token=None))
    assert "no Hugging Face token: set HF_TOKEN" in line
    result = run_distill("publish", dataset, "--repo-id", "not a repo", "--dry-run", tmp_path / "x", check=False)
    assert result.returncode == 2 and "error: --repo-id:" in result.stderr
    result = run_distill("publish", tmp_path, "--repo-id", REPO, "--dry-run", tmp_path / "y", check=False)
    assert result.returncode == 2 and "error: DATASET_DIR:" in result.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    result = run_distill("publish", dataset, "--repo-id", REPO, "--dry-run", tmp_path / "full", check=False)
    assert result.returncode == 2 and "error: --dry-run:" in result.stderr
