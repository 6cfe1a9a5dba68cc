"""Teacher scoring pass: the teacher's top-k log-probabilities at every position of given token ids, and its
log-probability of the token that is there.

One prefill per sequence, no generation. Position i of a scored sequence holds the teacher's k most likely
next tokens after ``ids[:i]`` (the distribution the token ``ids[i]`` was drawn from) and log p(ids[i] | ids[:i]),
the signal of the sampled-token reverse-KL estimate (on-policy distillation: ``ids[i]`` is the student's own
token, often outside the teacher's top k); position 0 has none. The log-probabilities are raw (temperature 1):
a forward pass's log-softmax in-process, and vLLM's default ``logprobs-mode`` over HTTP (``POST /v1/completions``
with the ids as the prompt, ``max_tokens: 1`` and ``prompt_logprobs: k``, which answers the actual token plus the
top k per position; the k highest are the top k, the actual token's entry is its log-probability).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, Protocol

from pipelines.spec import SpecError

TopK = list[tuple[int, float]]  # (token id, logprob), most likely first


class Scored(NamedTuple):
    """One position of a scored sequence: the teacher's top k there, and its log-probability of the sequence's own
    token at that position (in the top k or not)."""

    top: TopK
    token_logprob: float


class Scorer(Protocol):
    description: str

    def tokenize(self, text: str) -> list[int]:
        """The teacher's own token ids for a text (to check that it shares the student's vocabulary)."""

    def score(self, sequences: Sequence[Sequence[int]], k: int) -> list[list[Scored | None]]:
        """Per sequence, per position, the teacher's top k and the token's log-probability (None at position 0)."""


class TransformersScorer:
    """A forward pass of a local model (a path or Hub id), batched by length."""

    def __init__(self, model: str, device: str | None = None, batch_tokens: int = 16384) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        from transformers import AutoTokenizer

        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.batch_tokens = batch_tokens
        self.description = f"transformers forward pass of {model}"

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def score(self, sequences: Sequence[Sequence[int]], k: int) -> list[list[Scored | None]]:
        import torch

        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        results: list[list[Scored | None]] = [[] for _ in sequences]
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and len(sequences[order[end]]) * (end - start + 1) <= self.batch_tokens:
                end += 1
            batch = [list(sequences[i]) for i in order[start:end]]
            width = max(len(s) for s in batch)
            ids = torch.tensor([s + [0] * (width - len(s)) for s in batch], device=self.device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch], device=self.device)
            with torch.no_grad():
                logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
            logprobs = logits.log_softmax(-1)
            top = logprobs.topk(k, dim=-1)
            values, indices = top.values.tolist(), top.indices.tolist()
            # the log-probability of each sequence's own next token (ids[p + 1] at row p; padding gathers id 0)
            following = torch.cat([ids[:, 1:], torch.zeros_like(ids[:, :1])], 1)
            own = logprobs.gather(-1, following[..., None])[..., 0].tolist()
            for row, index in enumerate(order[start:end]):
                n = len(sequences[index])
                # logits at p predict token p+1: shift so that position i holds the distribution of ids[i]
                results[index] = [None] + [Scored(list(zip(indices[row][p], values[row][p], strict=True)), own[row][p])
                                           for p in range(n - 1)]
            start = end
        return results


class VLLMScorer:
    """``prompt_logprobs`` from a vLLM server (``distill serve``), ``max_concurrency`` requests in flight."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, max_concurrency: int = 8,
                 timeout_s: float = 600.0) -> None:
        import requests

        self.url = base_url.rstrip("/") + "/completions"
        self.model = model
        self.session = requests.Session()
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.description = f"vLLM prompt_logprobs of {model}"

    def _one(self, ids: Sequence[int], k: int) -> list[Scored | None]:
        import requests

        body = {"model": self.model, "prompt": list(ids), "max_tokens": 1, "prompt_logprobs": k, "temperature": 0.0}
        try:
            response = self.session.post(self.url, json=body, headers=self.headers, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise SpecError(f"--teacher-url: cannot reach {self.url} ({type(exc).__name__}); start the teacher "
                            "with `distill serve MODEL` or fix the URL") from None
        if response.status_code != 200:
            detail = response.text.strip().replace("\n", " ")[:200]
            raise SpecError(f"--teacher-url: {self.url} answered HTTP {response.status_code}: {detail}")
        positions = response.json()["choices"][0].get("prompt_logprobs")
        if not positions or len(positions) != len(ids):
            raise SpecError(f"--teacher-url: {self.url} returned no prompt_logprobs for {len(ids)} tokens; "
                            "is it a vLLM server?")
        out: list[Scored | None] = []
        for position, entry in enumerate(positions):
            if entry is None:
                out.append(None)
                continue
            actual = entry.get(str(ids[position]))
            if actual is None:
                raise SpecError(f"--teacher-url: {self.url} left the actual token out of prompt_logprobs at position "
                                f"{position}; is it a vLLM server?")
            ranked = sorted(((int(t), float(v["logprob"])) for t, v in entry.items()), key=lambda e: -e[1])
            # the actual token is listed too when it is outside the top k: the k highest are the top k
            out.append(Scored(ranked[:k], float(actual["logprob"])))
        return out

    def score(self, sequences: Sequence[Sequence[int]], k: int) -> list[list[Scored | None]]:
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            return list(pool.map(lambda ids: self._one(ids, k), sequences))

    def tokenize(self, text: str) -> list[int]:
        """The server's own tokenisation (``/tokenize``), to check that it shares the student's vocabulary."""
        root = self.url.rsplit("/v1/", 1)[0]
        response = self.session.post(f"{root}/tokenize", json={"model": self.model, "prompt": text,
                                                               "add_special_tokens": False},
                                     headers=self.headers, timeout=self.timeout_s)
        response.raise_for_status()
        return list(response.json()["tokens"])


def build_scorer(teacher_model: str | None, teacher_url: str | None, api_key: str | None = None) -> Scorer | None:
    """A served teacher when a URL is given, an in-process one for a model alone, else None."""
    if teacher_url:
        if not teacher_model:
            raise SpecError("--teacher-model: give the served model name with --teacher-url")
        return VLLMScorer(teacher_url, teacher_model, api_key=api_key)
    if teacher_model:
        return TransformersScorer(teacher_model)
    return None
