"""PRM scores from the transformers and vLLM-HTTP backends equal a direct, one-trace forward pass."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

from pipelines.spec import PrmConfig, SpecError
from prm.backend_vllm import PrmServerError
from prm.scorer import PrmScorer, check_config
from testing.prm_loopback import LoopbackPrmServer
from testing.tiny_prm import build_tiny_prm

PROBLEM = "Natalia sold 48 clips in April and half as many in May. How many clips did she sell?"
TRACES = [  # different lengths and step counts, in one batch
    ["In May she sold 48 / 2 = 24 clips.", "In total 48 + 24 = 72 clips.", "The answer is 72."],
    ["48 + 24 = 72"],
    ["Step 1: half of 48 is 24.", "Step 2: 48 + 24 = 72.", "Step 3: check: 72 - 48 = 24.",
     "Step 4: so the answer is 72, which is 3 * 24.", "Step 5: done."],
    ["She sold 48 + 48 = 96 clips (wrong).", "The answer is 96."],
]


@pytest.fixture(scope="module")
def tiny_prm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_prm(tmp_path_factory.mktemp("tiny-prm") / "prm")


@functools.cache
def _load(model_dir: Path, loader: type) -> tuple:
    return AutoTokenizer.from_pretrained(model_dir), loader.from_pretrained(model_dir, dtype=torch.float32).eval()


def direct_math_shepherd(model_dir: Path, problem: str, steps: list[str], tag: str = " ки") -> list[float]:
    """Math-Shepherd's own recipe: one trace, full logits, tag positions by token id."""
    tok, model = _load(Path(model_dir), AutoModelForCausalLM)
    plus, minus = tok.encode("+", add_special_tokens=False)[-1], tok.encode("-", add_special_tokens=False)[-1]
    tag_id = tok.encode(tag, add_special_tokens=False)[-1]
    text = f"{problem} " + "".join(f"{s}{tag}\n" for s in steps)
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        logits = model(ids).logits[0][:, [plus, minus]]
    return torch.softmax(logits, dim=-1)[:, 0][ids[0] == tag_id].tolist()


def direct_qwen_prm(model_dir: Path, problem: str, steps: list[str], system: str) -> list[float]:
    """Qwen2.5-Math-PRM's model-card recipe: chat template, softmax(logits)[..., 1] at <extra_0>."""
    tok, model = _load(Path(model_dir), AutoModelForTokenClassification)
    messages = [{"role": "system", "content": system}, {"role": "user", "content": problem},
                {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"}]
    ids = torch.tensor([tok.encode(tok.apply_chat_template(messages, tokenize=False))])
    with torch.no_grad():
        probs = torch.softmax(model(ids).logits[0], dim=-1)[:, 1]
    return probs[ids[0] == tok.convert_tokens_to_ids("<extra_0>")].tolist()


def direct_stepwise(model_dir: Path, problem: str, steps: list[str], separator: str = "\n") -> list[float]:
    """An Axolotl-trained PRM read by hand: Axolotl's stepwise_supervised ids (each piece tokenised alone), one
    trace, softmax(logits)[..., 1] at the last token of each step + separator."""
    tok, model = _load(Path(model_dir), AutoModelForTokenClassification)
    ids, positions = tok.encode(problem, add_special_tokens=False), []
    for step in steps:
        ids += tok.encode(step, add_special_tokens=False) + tok.encode(separator, add_special_tokens=False)
        positions.append(len(ids) - 1)
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor([ids])).logits[0], dim=-1)[:, 1]
    return probs[positions].tolist()


def _expected(style: str, model_dir: Path, cfg: PrmConfig) -> list[list[float]]:
    if style == "stepwise":
        return [direct_stepwise(model_dir, PROBLEM, steps) for steps in TRACES]
    if style == "math-shepherd":
        return [direct_math_shepherd(model_dir, PROBLEM, steps) for steps in TRACES]
    return [direct_qwen_prm(model_dir, PROBLEM, steps, cfg.system) for steps in TRACES]


@pytest.mark.parametrize("style", ["math-shepherd", "qwen-prm", "stepwise"])
def test_batched_scores_equal_direct_forward_pass(style: str, tiny_model_dir: Path, tiny_prm_dir: Path) -> None:
    model_dir = tiny_model_dir if style == "math-shepherd" else tiny_prm_dir
    cfg = PrmConfig(model=str(model_dir), style=style, batch_size=8)
    expected = _expected(style, model_dir, cfg)
    assert [len(e) for e in expected] == [len(t) for t in TRACES]
    scorer = PrmScorer(cfg)
    batched = scorer.step_rewards([(PROBLEM, steps) for steps in TRACES])
    one_by_one = PrmScorer(cfg.model_copy(update={"batch_size": 1}), tokenizer=scorer.tokenizer)
    single = one_by_one.step_rewards([(PROBLEM, steps) for steps in TRACES])
    for got, alone, want in zip(batched, single, expected, strict=True):
        assert got == pytest.approx(want, abs=1e-4)
        assert got == pytest.approx(alone, abs=1e-5)  # padding in a batch does not change a score
        assert all(0.0 <= s <= 1.0 for s in got)
    assert len({round(s, 6) for r in batched for s in r}) > 3  # real, distinct numbers


def test_thoughts_are_split_then_scored_and_long_ones_left_unscored(tiny_model_dir: Path) -> None:
    cfg = PrmConfig(model=str(tiny_model_dir), max_tokens=60)
    scorer = PrmScorer(cfg)
    short = "\n\n".join(TRACES[1])
    long = "\n\n".join(TRACES[2])
    verdicts = scorer.score([(PROBLEM, short), (PROBLEM, long), (PROBLEM, "  ")])
    assert verdicts[0] is not None and verdicts[1] is None and verdicts[2] is None
    assert verdicts[0].step_scores == pytest.approx(direct_math_shepherd(tiny_model_dir, PROBLEM, TRACES[1]), abs=1e-4)
    assert scorer.stats.scored == 1 and scorer.stats.too_long == 1 and scorer.stats.no_steps == 1


def test_a_tag_split_into_several_tokens_is_read_at_its_last_token(tiny_model_dir: Path) -> None:
    tag = " [ки]"  # BPE: " ", "[", two byte pieces, "]"
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert len(tok.encode(tag, add_special_tokens=False)) > 1
    cfg = PrmConfig(model=str(tiny_model_dir), step_tag=tag)
    got = PrmScorer(cfg).step_rewards([(PROBLEM, steps) for steps in TRACES[:2]])
    for steps, scores in zip(TRACES[:2], got, strict=True):
        assert scores == pytest.approx(direct_math_shepherd(tiny_model_dir, PROBLEM, steps, tag=tag), abs=1e-4)


def test_a_tag_string_inside_a_step_is_not_taken_for_a_tag(tiny_model_dir: Path) -> None:
    cfg = PrmConfig(model=str(tiny_model_dir))
    scores = PrmScorer(cfg).step_rewards([(PROBLEM, ["the symbol ки appears here", "next"])])[0]
    assert scores is not None and len(scores) == 2


@pytest.mark.parametrize("style,pooling", [("math-shepherd", "all"), ("math-shepherd", "step"),
                                           ("qwen-prm", "all"), ("qwen-prm", "step"), ("stepwise", "all")])
def test_vllm_pooling_backend_matches_direct_computation(style: str, pooling: str, tiny_model_dir: Path,
                                                         tiny_prm_dir: Path) -> None:
    model_dir = tiny_model_dir if style == "math-shepherd" else tiny_prm_dir
    with LoopbackPrmServer(model_dir, style, pooling=pooling) as server:
        cfg = PrmConfig(model=str(model_dir), style=style, backend="vllm", base_url=server.base_url + "/v1",
                        served_model="loopback-prm", batch_size=3, max_concurrency=2)
        got = PrmScorer(cfg).step_rewards([(PROBLEM, steps) for steps in TRACES])
        first = server.requests[0]["input"][0]
        if style == "stepwise":  # token ids, built as Axolotl built them, not a text to re-tokenise
            problem_ids = AutoTokenizer.from_pretrained(model_dir)(PROBLEM, add_special_tokens=False)["input_ids"]
            assert isinstance(first, list) and first[:len(problem_ids)] == problem_ids
        else:
            assert first.startswith(PROBLEM if style == "math-shepherd" else "<|im_start|>system")
        assert len(server.requests) == 2
    for scores, want in zip(got, _expected(style, model_dir, cfg), strict=True):
        assert scores == pytest.approx(want, abs=1e-4)


def test_vllm_backend_errors_are_one_line(tiny_prm_dir: Path) -> None:
    with LoopbackPrmServer(tiny_prm_dir, "qwen-prm") as server:
        cfg = PrmConfig(model=str(tiny_prm_dir), style="qwen-prm", backend="vllm", base_url=server.base_url)
        with pytest.raises(PrmServerError, match=r"HTTP 404: .*does not exist"):
            PrmScorer(cfg).step_rewards([(PROBLEM, TRACES[0])])
        server.fail_with = 503
        right_name = cfg.model_copy(update={"served_model": "loopback-prm"})
        with pytest.raises(PrmServerError, match="HTTP 503"):
            PrmScorer(right_name).step_rewards([(PROBLEM, TRACES[0])])
    closed = cfg.model_copy(update={"base_url": "http://127.0.0.1:9"})
    with pytest.raises(PrmServerError, match="cannot reach http://127.0.0.1:9/pooling") as info:
        PrmScorer(closed).step_rewards([(PROBLEM, TRACES[0])])
    assert "\n" not in str(info.value)


def test_unloadable_prms_fail_early_with_the_field(tmp_path: Path, tiny_prm_dir: Path) -> None:
    with pytest.raises(SpecError, match=r"^prm.model: cannot load '/nonexistent/prm'"):
        check_config(PrmConfig(model="/nonexistent/prm"))
    remote = tmp_path / "remote-prm"
    shutil.copytree(tiny_prm_dir, remote)
    config = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({**config, "architectures": ["Qwen2ForProcessRewardModel"]}))
    with pytest.raises(SpecError, match=r"^prm.trust_remote_code: .* set prm.trust_remote_code: true"):
        check_config(PrmConfig(model=str(remote), style="qwen-prm"))
