"""In-process PRM scoring with transformers: length-sorted padded batches, on GPU in bf16 when present.

For ``math-shepherd`` the backbone runs once and only the two rows of the LM head for ``+`` and ``-``
are applied at the tag positions, instead of projecting every token onto the whole vocabulary.
"""

from __future__ import annotations

import logging
from typing import Any

from prm.config import PrmConfig, SpecError
from prm.encode import EncodedTrace, length_batches, load_tokenizer, token_ids

log = logging.getLogger("distill.prm")


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pick_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def model_loader(cfg: PrmConfig) -> Any:
    """The transformers Auto class for the PRM; a SpecError when its config cannot be read or needs remote code."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForTokenClassification

    try:
        config = AutoConfig.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise SpecError(f"prm.model: cannot load {cfg.model!r} ({type(exc).__name__}); give a local path "
                        "or a Hub id available offline") from None
    architectures = getattr(config, "architectures", None) or []
    if cfg.style == "stepwise":
        check_token_classifier(cfg.model, architectures, getattr(config, "num_labels", None))
        return AutoModelForTokenClassification
    if cfg.style == "qwen-prm":
        remote = any("ProcessRewardModel" in a for a in architectures)
        if remote and not cfg.trust_remote_code:
            raise SpecError(f"prm.trust_remote_code: {cfg.model!r} is a {architectures[0]} (remote code); "
                            "set prm.trust_remote_code: true (or --trust-remote-code)")
        return AutoModel if remote else AutoModelForTokenClassification
    return AutoModelForCausalLM


def check_token_classifier(model: str, architectures: list[str], num_labels: int | None) -> None:
    """A stepwise PRM is a 2-label ``*ForTokenClassification`` checkpoint (Axolotl's ``process_reward_model``)."""
    if not any(a.endswith("ForTokenClassification") for a in architectures):
        found = architectures[0] if architectures else "a model without architectures"
        raise SpecError(f"prm.model: {model!r} is {found}, not a token classifier; style stepwise needs a PRM "
                        "trained with `distill config prm` (process_reward_model: true), or pick the style it has")
    if num_labels != 2:
        raise SpecError(f"prm.model: {model!r} has {num_labels} labels; a stepwise PRM has 2 (num_labels: 2 in "
                        "its training config)")


def load_model(cfg: PrmConfig, device: str, dtype: Any) -> Any:
    """The causal LM (math-shepherd) or the 2-class token-level reward model (qwen-prm, stepwise)."""
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    if not cfg.trust_remote_code:
        kwargs["attn_implementation"] = "sdpa"
    model = model_loader(cfg).from_pretrained(cfg.model, **kwargs)
    return model.to(device).eval()


class TransformersBackend:
    """Rewards per step for encoded traces, many traces per forward pass."""

    def __init__(self, cfg: PrmConfig, tokenizer: Any | None = None, model: Any | None = None) -> None:
        """``model``: an already built model (benchmarks with random weights); by default ``cfg.model`` is loaded."""
        import torch

        self.cfg = cfg
        self.tokenizer = tokenizer or load_tokenizer(cfg)
        self.device = pick_device(cfg.device)
        self.model = model if model is not None else load_model(cfg, self.device, pick_dtype(cfg.dtype, self.device))
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id or 0
        self._head: Any = None
        if cfg.style == "math-shepherd":
            lm_head = self.model.get_output_embeddings()
            plain = isinstance(lm_head, torch.nn.Linear) and not any(
                getattr(self.model.config, k, None) for k in ("final_logit_softcapping", "logit_scale"))
            ids = [token_ids(self.tokenizer, cfg.bad_token), token_ids(self.tokenizer, cfg.good_token)]
            self._reward_ids = ids
            if plain:
                weight = lm_head.weight[ids].detach().float()
                bias = lm_head.bias[ids].detach().float() if lm_head.bias is not None else None
                self._head = (weight, bias)

    def _pairs(self, ids: Any, mask: Any, rows: Any, cols: Any) -> Any:
        """(negative, positive) logits at the given (row, col) positions, as float32 [n, 2]."""
        if self.cfg.style == "math-shepherd" and self._head is not None:
            hidden = self.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
            weight, bias = self._head
            pairs = hidden[rows, cols].float() @ weight.T
            return pairs + bias if bias is not None else pairs
        out = self.model(input_ids=ids, attention_mask=mask)
        logits = out.logits if hasattr(out, "logits") else out[0]
        picked = logits[rows, cols].float()
        return picked[:, self._reward_ids] if self.cfg.style == "math-shepherd" else picked[:, :2]

    def score(self, traces: list[EncodedTrace]) -> list[list[float]]:
        import torch

        results: list[list[float]] = [[] for _ in traces]
        lengths = [len(t.input_ids) for t in traces]
        pending = []  # rewards stay on the device until the end: no host sync between batches
        for batch in length_batches(lengths, self.cfg.batch_size, self.cfg.max_batch_tokens):
            width = max(lengths[i] for i in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            rows, cols = [], []
            for r, i in enumerate(batch):  # right padding: real tokens never attend to pads
                ids[r, :lengths[i]] = torch.tensor(traces[i].input_ids)
                mask[r, :lengths[i]] = 1
                rows += [r] * len(traces[i].positions)
                cols += traces[i].positions
            with torch.inference_mode():
                pairs = self._pairs(ids.to(self.device), mask.to(self.device),
                                    torch.tensor(rows, device=self.device), torch.tensor(cols, device=self.device))
                pending.append((batch, torch.softmax(pairs, dim=-1)[:, 1]))
        for batch, rewards_on_device in pending:
            rewards, k = rewards_on_device.tolist(), 0
            for i in batch:
                n = len(traces[i].positions)
                results[i] = rewards[k:k + n]
                k += n
        return results
