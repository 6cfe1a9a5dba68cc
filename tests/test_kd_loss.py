"""The top-k + tail KD losses (distill/axolotl/kd_plugin/loss.py) against a full-vocabulary reference, in torch only,
and `distill config kd`'s choice of loss (the plugin by default, --loss/--beta, the refusals of rules.py).

What a distillation loss must do before any data is blamed: equal the true divergence when the k ids cover the
vocabulary (value and gradient), give ≈ 0 with the teacher as its own student, pull a student's mass from outside
the teacher's top k back in under the loss alone, and ignore what the collator masks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from distill.axolotl.configs import METHODS, TEMPLATES_DIR, loss_for_kd_beta, write_configs
from distill.axolotl.export import read_manifest
from distill.axolotl.kd_plugin.loss import (
    divergence,
    fused_topk_tail_loss,
    sampled_reverse_kl,
    sampled_token_loss,
    topk_tail_logprobs,
    topk_tail_loss,
)
from distill.axolotl.kd_plugin.rules import DATASET_TYPE, PLUGIN, SAMPLED_TOKEN_MASK, kd_config_problem
from pipelines.spec import SpecError

torch.set_num_threads(1)
KINDS = [("forward", 0.5), ("reverse", 0.5), ("jsd", 0.1), ("jsd", 0.5), ("jsd", 0.9)]


def full_reference(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str, beta: float) -> torch.Tensor:
    """The divergence over the whole vocabulary, written out plainly (TRL's generalized_jsd_loss convention)."""
    log_q = torch.log_softmax(student_logits.double(), -1)
    log_p = torch.log_softmax(teacher_logits.double(), -1)
    if kind == "forward":
        return (log_p.exp() * (log_p - log_q)).sum(-1)
    if kind == "reverse":
        return (log_q.exp() * (log_q - log_p)).sum(-1)
    log_m = torch.log(beta * log_p.exp() + (1 - beta) * log_q.exp())
    return beta * (log_p.exp() * (log_p - log_m)).sum(-1) + (1 - beta) * (log_q.exp() * (log_q - log_m)).sum(-1)


def teacher_topk(teacher_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's k most likely ids and their raw log-probabilities (what vLLM returns), most likely first."""
    logprobs, ids = torch.log_softmax(teacher_logits, -1).topk(k, -1)
    return ids, logprobs


@pytest.mark.parametrize(("kind", "beta"), KINDS)
def test_k_equal_to_vocab_is_the_full_divergence_value_and_gradient(kind: str, beta: float) -> None:
    torch.manual_seed(0)
    n, vocab = 6, 40
    teacher_logits = 2 * torch.randn(n, vocab)
    student = (2 * torch.randn(n, vocab)).requires_grad_()
    reference_student = student.detach().double().requires_grad_()
    ids, logprobs = teacher_topk(teacher_logits, vocab)
    ids = ids[:, torch.randperm(vocab)]  # any order of the k ids
    logprobs = torch.log_softmax(teacher_logits, -1).gather(1, ids)

    _, _, present = topk_tail_logprobs(student, ids, logprobs, torch.ones_like(ids))
    assert not present[:, -1].any()  # the k ids cover the vocabulary: no tail outcome
    loss = topk_tail_loss(student, ids, logprobs, torch.ones_like(ids), kind, beta)  # type: ignore[arg-type]
    reference = full_reference(reference_student, teacher_logits, kind, beta)
    assert torch.allclose(loss.double(), reference, atol=1e-5, rtol=1e-4), (loss, reference)
    loss.sum().backward()
    reference.sum().backward()
    assert torch.allclose(student.grad.double(), reference_student.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("kind", "beta"), KINDS)
@pytest.mark.parametrize("k", [1, 5, 20, 64])
def test_teacher_as_its_own_student_gives_zero(kind: str, beta: float, k: int) -> None:
    torch.manual_seed(1)
    logits = 3 * torch.randn(16, 64)
    ids, logprobs = teacher_topk(logits, k)
    loss = topk_tail_loss(logits, ids, logprobs, torch.ones_like(ids), kind, beta)  # type: ignore[arg-type]
    assert loss.abs().max() < 1e-3, loss
    assert loss.abs().max() < 1e-5  # in fact float32 rounding only


@pytest.mark.parametrize(("kind", "beta"), KINDS)
def test_divergence_is_nonnegative_and_positive_when_the_tail_differs(kind: str, beta: float) -> None:
    """Same probabilities on the k ids renormalised, different tail: Axolotl's normalised top-k loss sees no
    difference; the top-k + tail loss does."""
    torch.manual_seed(2)
    teacher_logits = 3 * torch.randn(32, 50)
    ids, logprobs = teacher_topk(teacher_logits, 5)
    student = torch.randn(32, 50)
    loss = topk_tail_loss(student, ids, logprobs, torch.ones_like(ids), kind, beta)  # type: ignore[arg-type]
    assert (loss > -1e-6).all()
    # a student equal to the teacher on the top 5 up to a common factor, with a different tail mass
    scaled = teacher_logits.clone()
    scaled.scatter_add_(1, ids, torch.full(ids.shape, 1.5))  # top-k block up by e^1.5 relative to the rest
    loss = topk_tail_loss(scaled, ids, logprobs, torch.ones_like(ids), kind, beta)  # type: ignore[arg-type]
    assert (loss > 1e-5).all()
    # what Axolotl's kd_normalize_topk compares: the student renormalised over the k ids equals the teacher's
    renormalised = torch.log_softmax(scaled.gather(1, ids), -1)
    assert torch.allclose(renormalised, torch.log_softmax(logprobs, -1), atol=1e-5)


@pytest.mark.parametrize(("kind", "beta"), KINDS)
def test_student_mass_outside_the_top_k_is_pulled_in(kind: str, beta: float) -> None:
    """Gradient steps on the student's logits under the loss alone: its tail mass falls toward the teacher's, and the
    probabilities on the k ids move to the teacher's (not merely their ratios)."""
    torch.manual_seed(3)
    vocab, k = 100, 5
    teacher_logits = torch.full((4, vocab), -4.0)
    teacher_logits[:, :k] = torch.tensor([4.0, 3.0, 2.5, 2.0, 1.0])
    ids, logprobs = teacher_topk(teacher_logits, k)
    teacher_tail = 1 - logprobs.exp().sum(-1)
    student = torch.zeros(4, vocab, requires_grad=True)  # uniform: 95 % of its mass outside the top 5

    def tail(logits: torch.Tensor) -> torch.Tensor:
        return 1 - torch.softmax(logits, -1).gather(1, ids).sum(-1)

    def step(optimizer: torch.optim.Optimizer) -> float:
        optimizer.zero_grad()
        loss = topk_tail_loss(student, ids, logprobs, torch.ones_like(ids), kind, beta).sum()  # type: ignore[arg-type]
        loss.backward()
        optimizer.step()
        return loss.item()

    start = previous = tail(student.detach())
    sgd = torch.optim.SGD([student], lr=1.0)
    losses = []
    for _ in range(5):  # plain SGD: the tail mass falls at every step
        losses.append(step(sgd))
        current = tail(student.detach())
        assert (current < previous).all(), (previous, current)
        previous = current
    adam = torch.optim.Adam([student], lr=0.1)  # then to convergence (JSD's gradients are small)
    losses += [step(adam) for _ in range(200)]
    end = tail(student.detach())
    assert (start > 0.9).all() and (end < 0.5 * start).all(), (start, end)
    assert losses[-1] < 0.1 * losses[0]
    assert (end - teacher_tail).abs().max() < 0.05, (end, teacher_tail)
    probs = torch.softmax(student.detach(), -1).gather(1, ids)
    assert (probs - logprobs.exp()).abs().max() < 0.05


def test_gradient_reaches_every_logit_outside_the_top_k() -> None:
    """The tail bucket is what carries gradient to the ids the teacher did not list (Axolotl's normalised loss
    gives them exactly zero)."""
    torch.manual_seed(4)
    teacher_logits = 3 * torch.randn(2, 30)
    ids, logprobs = teacher_topk(teacher_logits, 4)
    student = torch.randn(2, 30, requires_grad=True)
    for kind, beta in KINDS:
        student.grad = None
        topk_tail_loss(student, ids, logprobs, torch.ones_like(ids), kind, beta).sum().backward()  # type: ignore[arg-type]
        outside = torch.ones_like(student, dtype=torch.bool).scatter_(1, ids, False)
        assert (student.grad[outside].abs() > 0).all(), kind


def test_masking_positions_and_entries() -> None:
    torch.manual_seed(5)
    n, vocab, k = 5, 32, 6
    teacher_logits = 2 * torch.randn(n, vocab)
    ids, logprobs = teacher_topk(teacher_logits, k)
    student = torch.randn(n, vocab, requires_grad=True)
    mask = torch.ones(n, k, dtype=torch.int)
    mask[1] = 0  # a prompt / padding position (label -100)
    mask[3, 4:] = 0  # a position whose list is shorter than k (collator padding: id 0, -1e9)
    padded_ids, padded_logprobs = ids.clone(), logprobs.clone()
    padded_ids[1], padded_logprobs[1] = torch.arange(k), -float("inf")  # Axolotl's prompt padding
    padded_ids[3, 4:], padded_logprobs[3, 4:] = 0, -1e9
    loss = topk_tail_loss(student, padded_ids, padded_logprobs, mask, "forward")
    loss.sum().backward()
    assert loss[1] == 0 and (student.grad[1] == 0).all()
    # the shorter list is the same loss as k = 4 at that position
    short = topk_tail_loss(student[3:4], ids[3:4, :4], logprobs[3:4, :4], torch.ones(1, 4, dtype=torch.int))
    assert torch.allclose(loss[3], short[0], atol=1e-6)
    # the online collator's padding: -inf under mask 1, counted as absent
    online = padded_logprobs.clone()
    online[3, 4:] = -float("inf")
    online_mask = torch.ones_like(mask)
    online_mask[1] = 0
    assert torch.allclose(topk_tail_loss(student, padded_ids, online, online_mask)[3], short[0], atol=1e-6)
    for kind, beta in KINDS:
        values = topk_tail_loss(student, padded_ids, padded_logprobs, mask, kind, beta)  # type: ignore[arg-type]
        assert torch.isfinite(values).all() and values[1] == 0


def test_rounded_teacher_mass_above_one_stays_finite() -> None:
    """Raw top-k log-probabilities that sum to slightly more than 1 (float rounding): the tail is floored, the
    teacher renormalised, every loss and gradient finite (reverse KL would be infinite against a zero tail)."""
    teacher = torch.log(torch.tensor([[0.7, 0.2, 0.1000001]]))
    ids = torch.tensor([[3, 1, 7]])
    student = torch.randn(1, 10, requires_grad=True)
    for kind, beta in KINDS:
        student.grad = None
        loss = topk_tail_loss(student, ids, teacher, torch.ones_like(ids), kind, beta)  # type: ignore[arg-type]
        loss.sum().backward()
        assert torch.isfinite(loss).all() and torch.isfinite(student.grad).all(), kind
        log_p, _, present = topk_tail_logprobs(student, ids, teacher, torch.ones_like(ids))
        assert math.isclose(log_p[present].exp().sum().item(), 1.0, rel_tol=1e-6)


def test_divergence_rejects_unknown_kind_and_beta() -> None:
    zeros = torch.zeros(1, 2)
    present = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="beta"):
        divergence(zeros, zeros, present, "jsd", 1.0)
    with pytest.raises(ValueError, match="forward, reverse, jsd"):
        divergence(zeros, zeros, present, "kl")  # type: ignore[arg-type]


@pytest.mark.parametrize(("kind", "beta"), KINDS)
def test_fused_loss_pairs_like_axolotl_and_matches_the_plain_computation(kind: str, beta: float) -> None:
    """From hidden states: target p against hidden state p, label p + 1 for the cross-entropy, sums; chunked and
    checkpointed, the value and the gradients equal the plain full-logits computation."""
    torch.manual_seed(6)
    batch, seq, dim, vocab, k = 2, 7, 8, 24, 4
    hidden = torch.randn(batch, seq, dim, requires_grad=True)
    weight = torch.randn(vocab, dim, requires_grad=True)
    teacher_logits = 2 * torch.randn(batch, seq, vocab)
    ids, logprobs = teacher_topk(teacher_logits, k)
    labels = torch.randint(0, vocab, (batch, seq))
    labels[:, :3] = -100  # the prompt
    labels[1, -1] = -100  # padding
    # the factory's dataset type: target p (over token p + 1) is trained when label p + 1 is
    shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
    mask = (shifted != -100).int()[..., None].expand(-1, -1, k).contiguous()

    total, kd_sum, ce_sum = fused_topk_tail_loss(weight, hidden, ids, logprobs, mask, labels, kd_weight=0.9,
                                                 ce_weight=0.1, kind=kind, beta=beta, chunk_size=3)  # type: ignore[arg-type]
    total.backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None

    logits = hidden @ weight.T
    kd = topk_tail_loss(logits.reshape(-1, vocab), ids.reshape(-1, k), logprobs.reshape(-1, k), mask.reshape(-1, k),
                        kind, beta).sum()  # type: ignore[arg-type]
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1),
                                           ignore_index=-100, reduction="sum")
    plain = 0.9 * kd + 0.1 * ce
    plain.backward()
    assert torch.allclose(total, plain, atol=1e-5) and torch.allclose(kd_sum, kd, atol=1e-5)
    assert torch.allclose(ce_sum, ce, atol=1e-5)
    assert torch.allclose(grads[0], hidden.grad, atol=1e-5) and torch.allclose(grads[1], weight.grad, atol=1e-5)
    # nothing reaches a hidden state that has neither a target nor a next label
    assert grads[0][1, -1].abs().sum() == 0


# --- `distill config kd`: the plugin by default, --loss/--beta, and the refusals (distill/axolotl/kd_plugin/rules.py)

def _export(folder: Path, temperature: float = 1.0) -> Path:
    """A KD export folder as far as `distill config` reads it (export.json; the rows are not opened)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "export.json").write_text(json.dumps({
        "format": "kd", "file_format": "parquet", "student": "tiny/student", "files": [{"path": "train.parquet"}],
        "kd": {"distribution": {"logprobs": "raw", "temperature": temperature, "top_k": 4}}}))
    return folder


def _render(tmp: Path, **kwargs: Any) -> dict[str, Any]:
    export = kwargs.pop("export", None) or _export(tmp / "export")
    (path,) = write_configs("kd", export, read_manifest(export), "tiny/student", tmp / "kd.yaml", **kwargs)
    return yaml.safe_load(path.read_text())


def _axolotl_template(tmp: Path) -> Path:
    """The default KD template as it was: Axolotl's own plugin and dataset type."""
    text = (TEMPLATES_DIR / METHODS["kd"]).read_text().replace(PLUGIN, "axolotl.integrations.kd.KDPlugin")
    text = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("kd_divergence:"))
    path = tmp / "axolotl-kd.yaml"
    path.write_text(text.replace(DATASET_TYPE, "axolotl.integrations.kd.chat_template"))
    return path


def test_config_kd_selects_the_plugin_and_raw_targets(tmp_path: Path) -> None:
    config = _render(tmp_path)
    assert config["plugins"] == [PLUGIN] and config["kd_trainer"] is True and config["kd_divergence"] == "forward"
    assert "kd_jsd_beta" not in config and not config["kd_normalize_topk"] and config["kd_temperature"] == 1.0
    entry = config["datasets"][0]
    assert entry["type"] == DATASET_TYPE and entry["temperature"] == 1.0 and entry["logprobs_field"] == "logprobs"
    assert _render(tmp_path, loss="reverse")["kd_divergence"] == "reverse"
    jsd = _render(tmp_path, loss="jsd")
    assert jsd["kd_divergence"] == "jsd" and jsd["kd_jsd_beta"] == 0.5
    assert _render(tmp_path, loss="jsd", beta=0.2)["kd_jsd_beta"] == 0.2
    assert "kd_jsd_beta" not in _render(tmp_path, loss="forward")
    # Axolotl's own plugin stays usable where it is a divergence: forward KL to the renormalised teacher
    assert _render(tmp_path, template=str(_axolotl_template(tmp_path)))["plugins"] == [
        "axolotl.integrations.kd.KDPlugin"]


@pytest.mark.parametrize(("kd_beta", "divergence"), [(0.0, "forward"), (1.0, "reverse"), (0.3, "jsd")])
def test_gkd_beta_of_onpolicy_and_the_lab_maps_to_the_plugin(tmp_path: Path, kd_beta: float, divergence: str) -> None:
    config = _render(tmp_path, **loss_for_kd_beta(kd_beta))
    assert config["kd_divergence"] == divergence and config.get("kd_jsd_beta") == (0.3 if kd_beta == 0.3 else None)
    assert config.get("kd_beta", 0.0) == 0.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"overrides": {"kd_normalize_topk": True}}, "kd_normalize_topk: true renormalises the student"),
    ({"overrides": {"kd_beta": 1.0}}, "kd_beta: 1.0 is Axolotl's own knob"),
    ({"overrides": {"kd_temperature": 2.0}}, "kd_temperature: 2.0"),
    ({"loss": "forward", "beta": 0.3}, "--beta: only with --loss jsd"),
    ({"loss": "jsd", "beta": 1.0}, r"--beta: 1.0 is not in \(0, 1\)"),
    ({"loss": "kl"}, "--loss: 'kl' is not one of forward, reverse, jsd"),
    ({"overrides": {"kd_divergence": "jsd"}}, "kd_jsd_beta: None with kd_divergence: jsd"),
    ({"overrides": {"kd_jsd_beta": 0.5}}, "kd_jsd_beta: 0.5 is only read with kd_divergence: jsd"),
    ({"temperature": 0.6}, r"datasets\[0\].temperature: 0.6"),
    ({"axolotl": True, "overrides": {"kd_beta": 1.0}}, "kd_beta: 1.0 is Axolotl's reverse KL / JSD summed over"),
    ({"axolotl": True, "overrides": {"kd_beta": 0.5}}, "not a divergence"),
    ({"axolotl": True, "overrides": {"kd_normalize_topk": True}}, "kd_normalize_topk: true"),
    ({"axolotl": True, "loss": "reverse"}, "--loss: read only by the factory's KD plugin"),
])
def test_config_kd_refuses_losses_that_are_not_divergences(tmp_path: Path, kwargs: dict[str, Any],
                                                           message: str) -> None:
    if kwargs.pop("axolotl", False):
        kwargs["template"] = str(_axolotl_template(tmp_path))
    if "temperature" in kwargs:
        kwargs["export"] = _export(tmp_path / "export", kwargs.pop("temperature"))
    with pytest.raises(SpecError, match=message):
        _render(tmp_path, **kwargs)
    assert not (tmp_path / "kd.yaml").exists()  # nothing written


def test_rules_on_hand_written_configs() -> None:
    good = yaml.safe_load((TEMPLATES_DIR / METHODS["kd"]).read_text())
    assert kd_config_problem(good) is None and kd_config_problem({"plugins": [PLUGIN]}) is None  # not KD
    both = {**good, "plugins": [PLUGIN, "axolotl.integrations.kd.KDPlugin"]}
    assert kd_config_problem(both).startswith("plugins: list")
    renormalised = {**good, "datasets": [{**good["datasets"][0], "type": "axolotl.integrations.kd.chat_template"}]}
    assert kd_config_problem(renormalised).startswith("datasets[0].type:")
    online = yaml.safe_load((TEMPLATES_DIR / METHODS["kd-online"]).read_text())
    assert online["plugins"] == [PLUGIN] and kd_config_problem(online) is None
    for problem in (kd_config_problem({**good, "kd_beta": 1.0}), kd_config_problem(both)):
        assert problem and "\n" not in problem


def test_config_kd_error_is_one_line_from_the_cli(tmp_path: Path) -> None:
    from conftest import run_distill

    result = run_distill("config", "kd", "--dataset", _export(tmp_path / "export"), "--student", "tiny/student",
                         "--out", tmp_path / "kd.yaml", "--set", "kd_normalize_topk=true", check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: kd_normalize_topk: true renormalises the student over the teacher's k ids")


def test_fused_loss_without_a_trained_position_is_zero_and_backpropagates() -> None:
    hidden = torch.randn(1, 3, 4, requires_grad=True)
    weight = torch.randn(10, 4, requires_grad=True)
    total, kd, ce = fused_topk_tail_loss(weight, hidden, torch.zeros(1, 3, 2, dtype=torch.long),
                                         torch.full((1, 3, 2), -1e9), torch.zeros(1, 3, 2, dtype=torch.int),
                                         torch.full((1, 3), -100), kd_weight=0.9, ce_weight=0.1)
    total.backward()
    assert total.item() == kd.item() == ce.item() == 0.0 and (hidden.grad == 0).all()


def test_ids_outside_the_vocabulary_are_not_counted() -> None:
    logits = torch.randn(1, 8)
    ids, logprobs = teacher_topk(logits, 3)
    bad = torch.cat([ids, torch.tensor([[99]])], -1)
    with_bad = topk_tail_loss(logits + 1, bad, torch.cat([logprobs, torch.tensor([[-2.0]])], -1),
                              torch.ones_like(bad))
    assert torch.allclose(with_bad, topk_tail_loss(logits + 1, ids, logprobs, torch.ones_like(ids)))


# --- reverse_sampled: the sampled-token estimate of KL(student || teacher) (on-policy rows)

def with_sampled_entry(ids: torch.Tensor, logprobs: torch.Tensor, sampled: torch.Tensor,
                       teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The target lists as the factory's dataset type prepares them for reverse_sampled: the k top entries (mask 1)
    plus the sampled token and the teacher's log-probability of it (mask 2)."""
    teacher_token = torch.log_softmax(teacher_logits, -1).gather(1, sampled[:, None])
    mask = torch.cat([torch.ones_like(ids), torch.full_like(sampled[:, None], SAMPLED_TOKEN_MASK)], -1)
    return torch.cat([ids, sampled[:, None]], -1), torch.cat([logprobs, teacher_token], -1), mask


def test_sampled_estimate_has_the_reverse_kl_as_expectation_value_and_gradient() -> None:
    """Over every token x weighted by the student's q(x) (the exact expectation over x ~ q), the estimate's value is
    the full-vocabulary KL(q || p) and its gradient is KL's gradient, at any k of the stored top-k lists."""
    torch.manual_seed(7)
    n, vocab, k = 3, 12, 4
    teacher_logits = 2 * torch.randn(n, vocab)
    student = (2 * torch.randn(n, vocab)).requires_grad_()
    ids, logprobs = teacher_topk(teacher_logits, k)
    q = torch.softmax(student.detach().double(), -1)
    value = torch.zeros(n, dtype=torch.double)
    grad = torch.zeros(n, vocab, dtype=torch.double)
    for x in range(vocab):  # E_{x ~ q}[.] = sum_x q(x) [.]
        sampled = torch.full((n,), x)
        student.grad = None
        per_position = topk_tail_loss(student, *with_sampled_entry(ids, logprobs, sampled, teacher_logits),
                                      "reverse_sampled")
        per_position.sum().backward()
        value += q[:, x] * per_position.detach().double()
        grad += q[:, x, None] * student.grad.double()
    reference_student = student.detach().double().requires_grad_()
    reference = full_reference(reference_student, teacher_logits, "reverse", 0.5)
    reference.sum().backward()
    assert torch.allclose(value, reference.detach(), atol=1e-5), (value, reference)
    assert torch.allclose(grad, reference_student.grad, atol=1e-5)


def test_sampled_estimate_with_the_teacher_as_its_own_student_is_zero() -> None:
    torch.manual_seed(8)
    logits = (3 * torch.randn(16, 64)).requires_grad_()
    ids, logprobs = teacher_topk(logits.detach(), 5)
    sampled = torch.distributions.Categorical(logits=logits.detach()).sample()
    loss = topk_tail_loss(logits, *with_sampled_entry(ids, logprobs, sampled, logits.detach()), "reverse_sampled")
    loss.sum().backward()
    assert loss.abs().max() < 1e-5 and logits.grad.abs().max() < 1e-5


def test_sampled_estimate_lowers_a_token_the_teacher_finds_unlikely() -> None:
    """The advantage log p(x) - log q(x): a sampled token the student over-rates is pushed down, one it under-rates
    up; the top-k + tail losses ignore the sampled entry (mask 2), and the estimate ignores the top-k entries."""
    student = torch.zeros(2, 6, requires_grad=True)  # uniform: log q = -log 6 everywhere
    teacher_logits = torch.tensor([[5.0, 0, 0, 0, 0, -5.0], [5.0, 0, 0, 0, 0, -5.0]])
    ids, logprobs = teacher_topk(teacher_logits, 2)
    sampled = torch.tensor([5, 0])  # the teacher's least likely token, then its most likely one
    targets = with_sampled_entry(ids, logprobs, sampled, teacher_logits)
    topk_tail_loss(student, *targets, "reverse_sampled").sum().backward()
    assert student.grad[0, 5] > 0 and student.grad[1, 0] < 0  # gradient descent: row 0's x down, row 1's x up
    for kind, beta in KINDS:
        with_entry = topk_tail_loss(student, *targets, kind, beta)  # type: ignore[arg-type]
        assert torch.allclose(with_entry, topk_tail_loss(student, ids, logprobs, torch.ones_like(ids), kind, beta))  # type: ignore[arg-type]
    # no marked entry at a position (masked, or a row without target_token_logprob): no loss there
    assert (sampled_token_loss(student, ids, logprobs, torch.ones_like(ids)) == 0).all()


def test_sampled_reverse_kl_value_and_gradient_by_hand() -> None:
    log_q = torch.tensor([-0.5, -3.0], requires_grad=True)
    log_p = torch.tensor([-2.0, -1.0])
    value = sampled_reverse_kl(log_q, log_p)
    value.sum().backward()
    assert torch.allclose(value, torch.tensor([1.5, -2.0])) and torch.allclose(log_q.grad, torch.tensor([1.5, -2.0]))


def test_fused_loss_with_reverse_sampled_and_no_cross_entropy() -> None:
    """Through the hidden states as the trainer calls it: kd_ce_alpha 0 computes no cross-entropy (its sum is 0),
    and the KD sum is the per-position estimate at the marked entries."""
    torch.manual_seed(9)
    batch, seq, dim, vocab, k = 2, 6, 8, 20, 3
    hidden = torch.randn(batch, seq, dim, requires_grad=True)
    weight = torch.randn(vocab, dim)
    teacher_logits = 2 * torch.randn(batch * seq, vocab)
    ids, logprobs = teacher_topk(teacher_logits, k)
    sampled = torch.randint(0, vocab, (batch * seq,))
    ids, logprobs, mask = with_sampled_entry(ids, logprobs, sampled, teacher_logits)
    mask[:4] = 0  # the prompt
    shape = (batch, seq, k + 1)
    labels = torch.randint(0, vocab, (batch, seq))
    total, kd, ce = fused_topk_tail_loss(weight, hidden, ids.reshape(shape), logprobs.reshape(shape),
                                         mask.reshape(shape), labels, kd_weight=1.0, ce_weight=0.0,
                                         kind="reverse_sampled", chunk_size=5)
    total.backward()
    plain = sampled_token_loss(hidden.detach().reshape(-1, dim) @ weight.T, ids, logprobs, mask).sum()
    assert ce.item() == 0.0 and torch.allclose(kd, plain, atol=1e-5) and torch.allclose(total, plain, atol=1e-5)
    assert hidden.grad[0, :4].abs().sum() == 0 and hidden.grad[0, 4:].abs().sum() > 0


def test_rules_for_reverse_sampled() -> None:
    good = {**yaml.safe_load((TEMPLATES_DIR / METHODS["kd"]).read_text()), "kd_divergence": "reverse_sampled",
            "kd_alpha": 1.0, "kd_ce_alpha": 0.0}
    assert kd_config_problem(good) is None
    assert kd_config_problem({**good, "kd_ce_alpha": 0.1}).startswith(
        "kd_ce_alpha: 0.1 with kd_divergence: reverse_sampled puts a cross-entropy on the student's own samples")
    online = yaml.safe_load((TEMPLATES_DIR / METHODS["kd-online"]).read_text())
    problem = kd_config_problem({**online, "kd_divergence": "reverse_sampled", "kd_ce_alpha": 0.0})
    assert problem and problem.startswith("kd_divergence: reverse_sampled reads the teacher's log-probability")
    config = _render_sampled()
    assert config["kd_divergence"] == "reverse_sampled" and "kd_jsd_beta" not in config


def _render_sampled() -> dict[str, Any]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return _render(Path(tmp), loss="reverse_sampled", overrides={"kd_alpha": 1.0, "kd_ce_alpha": 0.0})
