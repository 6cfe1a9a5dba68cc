"""PRM scoring through a vLLM server running the PRM as a reward (pooling) model.

``vllm serve MODEL --task reward`` (Qwen2.5-Math-PRM: STEP pooling at ``<extra_0>``; Math-Shepherd:
add ``--override-pooler-config '{"pooling_type": "STEP", "step_tag_id": ID, "returned_token_ids": [GOOD, BAD]}'``).
``POST /pooling {"model", "input": [texts]}`` answers ``{"data": [{"index", "data": rows}]}`` where ``rows``
has one row per step (STEP pooling) or one per token (ALL pooling; we pick the tag positions, found with
the local tokenizer). A row is ``[P(+), P(-)]`` (math-shepherd) or ``[P(0), P(1)]`` (qwen-prm), or a
vocabulary-sized row from which the ``+``/``-`` entries are taken.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipelines.spec import PrmConfig
from prm.encode import EncodedTrace, load_tokenizer, pair_reward, token_ids


class PrmServerError(RuntimeError):
    """The PRM server failed or answered something we cannot read; the message is one line."""


def pooling_url(base_url: str) -> str:
    """vLLM serves /pooling at the root, beside /v1."""
    base = base_url.rstrip("/")
    return (base[:-3] if base.endswith("/v1") else base) + "/pooling"


def step_pair(row: list[float], style: str, good_id: int, bad_id: int) -> tuple[float, float]:
    """(negative, positive) from one server row."""
    if len(row) == 2:
        return (row[1], row[0]) if style == "math-shepherd" else (row[0], row[1])
    if style == "math-shepherd" and len(row) > max(good_id, bad_id):
        return row[bad_id], row[good_id]
    raise PrmServerError(f"a pooling row has {len(row)} values; expected 2 (STEP pooling with "
                         "returned_token_ids) or one per vocabulary entry")


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

    def _post(self, texts: list[str]) -> list[Any]:
        import requests

        try:
            response = self.session.post(self.url, json={"model": self.model_name, "input": texts},
                                         timeout=self.cfg.timeout_s)
        except requests.RequestException as exc:
            raise PrmServerError(f"prm.base_url: cannot reach {self.url} ({type(exc).__name__}); "
                                 "start `vllm serve MODEL --task reward` or fix the URL") from None
        if response.status_code != 200:
            detail = response.text.strip().replace("\n", " ")[:200]
            raise PrmServerError(f"prm.base_url: {self.url} answered HTTP {response.status_code}: {detail}")
        items = sorted(response.json().get("data") or [], key=lambda d: d.get("index", 0))
        if len(items) != len(texts):
            raise PrmServerError(f"{self.url} returned {len(items)} results for {len(texts)} inputs")
        return [item["data"] for item in items]

    def score(self, traces: list[EncodedTrace]) -> list[list[float]]:
        size = self.cfg.batch_size
        chunks = [traces[i:i + size] for i in range(0, len(traces), size)]
        with ThreadPoolExecutor(max_workers=self.cfg.max_concurrency) as pool:
            answers = list(pool.map(lambda chunk: self._post([t.text for t in chunk]), chunks))
        results = []
        for chunk, rows_list in zip(chunks, answers, strict=True):
            for trace, rows in zip(chunk, rows_list, strict=True):
                results.append(rewards_from_rows(trace, rows, self.cfg.style, self.good_id, self.bad_id,
                                                 self.cfg.server_probs))
        return results
