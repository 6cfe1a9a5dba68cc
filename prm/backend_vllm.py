"""PRM scoring through a vLLM server running the PRM as a token-classification pooling model.

Checked with vLLM 0.32 (``--task reward`` is gone); ``server_args(cfg, tokenizer)`` writes these flags:

- ``qwen-prm``: ``vllm serve MODEL --runner pooling --pooler-config '{"task": "token_classify",
  "tok_pooling_type": "ALL"}'``. Qwen2.5-Math-PRM runs as vLLM's ``Qwen2ForProcessRewardModel``, a
  ``*ForTokenClassification`` checkpoint (the tiny PRM of testing/tiny_prm.py) through ``--convert classify``
  (automatic); rows are ``softmax(head)`` = ``[P(0), P(1)]``.
- ``stepwise`` (a token classifier trained by ``distill config prm``): served as qwen-prm is; its ids are built
  piece by piece as Axolotl built them (prm/encode.py), so they are sent as token ids, never as text.
- ``math-shepherd`` (a causal LM): ``vllm serve MODEL --runner pooling --convert classify --hf-overrides
  '{"classifier_from_token": ["+", "-"], "method": "no_post_processing"}' --pooler-config (as above)``: the
  classifier is the two LM-head rows of the vocabulary entries ``+``/``-`` (token strings, not text:
  ``server_args`` takes them from the tokenizer), so a row is ``softmax([logit+, logit-])`` = ``[P(+), P(-)]``.
  ``returned_token_ids`` does not do this: STEP pooling applies it to the hidden state, before any head.

``POST /pooling {"model", "task": "token_classify", "input": [texts], "add_special_tokens"}`` answers
``{"data": [{"index", "data": rows}]}``: one row per token (ALL pooling; we pick the tag positions, found with
the local tokenizer) or, with ``"tok_pooling_type": "STEP", "step_tag_id": ID``, one per occurrence of token
ID. A vocabulary-sized row (math-shepherd) is read at the ``+``/``-`` ids.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prm.config import PrmConfig, SpecError
from prm.encode import EncodedTrace, load_tokenizer, pair_reward, token_ids


class PrmServerError(RuntimeError):
    """The PRM server failed or answered something we cannot read; the message is one line."""


def pooling_url(base_url: str) -> str:
    """vLLM serves /pooling at the root, beside /v1."""
    base = base_url.rstrip("/")
    return (base[:-3] if base.endswith("/v1") else base) + "/pooling"


def server_args(cfg: PrmConfig, tokenizer: Any, step_pooling: bool = False) -> list[str]:
    """The ``vllm serve MODEL`` flags that make ``/pooling`` answer the rows this backend reads.

    ``step_pooling``: one row per step tag (less JSON) instead of one per token; exact only when the tag's
    last token never occurs elsewhere in a trace (else the row count mismatches and scoring fails).
    """
    pooler: dict[str, Any] = {"task": "token_classify", "tok_pooling_type": "ALL"}
    if step_pooling and cfg.style == "stepwise":
        raise SpecError("step_pooling: a stepwise PRM's separator token also occurs inside steps; serve it with "
                        "ALL pooling (the default)")
    if step_pooling:
        pooler.update(tok_pooling_type="STEP", step_tag_id=token_ids(tokenizer, cfg.tag))
    args = ["--runner", "pooling"]
    if cfg.style == "math-shepherd":
        tokens = tokenizer.convert_ids_to_tokens([token_ids(tokenizer, cfg.good_token),
                                                  token_ids(tokenizer, cfg.bad_token)])
        args += ["--convert", "classify", "--hf-overrides",
                 json.dumps({"classifier_from_token": tokens, "method": "no_post_processing"}, ensure_ascii=False)]
    args += ["--pooler-config", json.dumps(pooler), "--max-model-len", str(cfg.max_tokens)]
    if cfg.served_model:
        args += ["--served-model-name", cfg.served_model]
    return args + (["--trust-remote-code"] if cfg.trust_remote_code else [])


def step_pair(row: list[float], style: str, good_id: int, bad_id: int) -> tuple[float, float]:
    """(negative, positive) from one server row."""
    if len(row) == 2:
        return (row[1], row[0]) if style == "math-shepherd" else (row[0], row[1])
    if style == "math-shepherd" and len(row) > max(good_id, bad_id):
        return row[bad_id], row[good_id]
    raise PrmServerError(f"a pooling row has {len(row)} values; expected 2: serve the PRM as a token "
                         "classifier (see prm/backend_vllm.py), not as an embedding model")


def rewards_from_rows(trace: EncodedTrace, rows: list[Any], style: str, good_id: int, bad_id: int,
                      probs: bool) -> list[float]:
    """The step rewards of one trace from the server's rows (per step or per token)."""
    if rows and not isinstance(rows[0], list):
        rows = [rows]  # a single step pooled to one flat row
    if len(rows) == len(trace.input_ids) and len(rows) != len(trace.positions):
        rows = [rows[p] for p in trace.positions]
    if len(rows) != len(trace.positions):
        raise PrmServerError(f"the server returned {len(rows)} rows for a trace of {len(trace.positions)} steps "
                             f"and {len(trace.input_ids)} tokens; check prm.tokenizer and the pooler's step_tag_id")
    return [pair_reward(*step_pair(row, style, good_id, bad_id), probs=probs) for row in rows]


class VLLMPoolingBackend:
    """Rewards per step from ``/pooling``; ``batch_size`` texts per request, ``max_concurrency`` requests."""

    def __init__(self, cfg: PrmConfig, tokenizer: Any | None = None) -> None:
        import requests

        self.cfg = cfg
        self.url = pooling_url(cfg.base_url)
        self.model_name = cfg.served_model or cfg.model
        self.tokenizer = tokenizer or load_tokenizer(cfg)
        self.good_id = token_ids(self.tokenizer, cfg.good_token)
        self.bad_id = token_ids(self.tokenizer, cfg.bad_token)
        self.session = requests.Session()

    def _post(self, texts: list[str] | list[list[int]]) -> list[Any]:
        import requests

        try:
            body = {"model": self.model_name, "task": "token_classify", "input": texts,
                    "add_special_tokens": self.cfg.style == "math-shepherd"}  # as prm.encode tokenizes
            response = self.session.post(self.url, json=body, timeout=self.cfg.timeout_s)
        except requests.RequestException as exc:
            raise PrmServerError(f"prm.base_url: cannot reach {self.url} ({type(exc).__name__}); "
                                 "start `vllm serve MODEL --runner pooling …` (see prm/backend_vllm.py) "
                                 "or fix the URL") from None
        if response.status_code != 200:
            detail = response.text.strip().replace("\n", " ")[:200]
            raise PrmServerError(f"prm.base_url: {self.url} answered HTTP {response.status_code}: {detail}")
        items = sorted(response.json().get("data") or [], key=lambda d: d.get("index", 0))
        if len(items) != len(texts):
            raise PrmServerError(f"{self.url} returned {len(items)} results for {len(texts)} inputs")
        return [item["data"] for item in items]

    def _inputs(self, traces: list[EncodedTrace]) -> list[str] | list[list[int]]:
        """Texts, or for ``stepwise`` the ids themselves (re-tokenising the joined text would merge tokens)."""
        if self.cfg.style == "stepwise":
            return [t.input_ids for t in traces]
        return [t.text for t in traces]

    def score(self, traces: list[EncodedTrace]) -> list[list[float]]:
        size = self.cfg.batch_size
        chunks = [traces[i:i + size] for i in range(0, len(traces), size)]
        with ThreadPoolExecutor(max_workers=self.cfg.max_concurrency) as pool:
            answers = list(pool.map(lambda chunk: self._post(self._inputs(chunk)), chunks))
        results = []
        for chunk, rows_list in zip(chunks, answers, strict=True):
            for trace, rows in zip(chunk, rows_list, strict=True):
                results.append(rewards_from_rows(trace, rows, self.cfg.style, self.good_id, self.bad_id,
                                                 self.cfg.server_probs))
        return results
