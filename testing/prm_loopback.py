"""A loopback vLLM reward-model server: ``POST /pooling`` answered with a local transformers model.

It computes what vLLM's poolers return, independently of prm/backend_transformers (full forward pass,
no batching): with ``pooling="all"`` one row per token, with ``pooling="step"`` only the rows at the step
tag token (vLLM's STEP pooler). Rows are ``[P(+), P(-)]`` renormalised over the two tokens
(math-shepherd, ``classifier_from_token: [+, -]``) or ``softmax(head)`` over the 2 classes (qwen-prm).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from testing.loopback.http import JsonHandler, LoopbackServer


class LoopbackPrmServer:
    """``with LoopbackPrmServer(model_dir, "qwen-prm") as s: s.base_url`` → ``http://127.0.0.1:PORT``."""

    def __init__(self, model_dir: str | Path, style: str, pooling: str = "all", step_tag: str | None = None,
                 model_name: str = "loopback-prm") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

        self.style, self.pooling, self.model_name = style, pooling, model_name
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        loader = AutoModelForCausalLM if style == "math-shepherd" else AutoModelForTokenClassification
        self.model = loader.from_pretrained(model_dir, dtype=torch.float32).eval()
        tag = step_tag or (" ки" if style == "math-shepherd" else "<extra_0>")
        self.step_tag_id = self.tokenizer.encode(tag, add_special_tokens=False)[-1]
        self.returned = [self.tokenizer.encode(t, add_special_tokens=False)[-1] for t in ("+", "-")]
        self.requests: list[dict[str, Any]] = []
        self.fail_with: int | None = None
        self._http: LoopbackServer | None = None
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        assert self._http is not None, "server not started"
        return self._http.url

    def rows(self, text: str | list[int], add_special_tokens: bool = True) -> list[list[float]]:
        """Per-token rows for a text (tokenised here) or, as vLLM takes them too, for token ids."""
        import torch

        if isinstance(text, list):
            ids = text
        else:
            ids = self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]  # vLLM's default: True
        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([ids])).logits[0].float()
        if self.style == "math-shepherd":
            logits = logits[:, self.returned]
        probs = torch.softmax(logits, dim=-1)
        if self.pooling == "step":
            probs = probs[torch.tensor(ids) == self.step_tag_id]
        return probs.tolist()

    def pool(self, body: dict[str, Any]) -> dict[str, Any]:
        single = isinstance(body["input"], str) or (body["input"] and isinstance(body["input"][0], int))
        texts = [body["input"]] if single else body["input"]
        with self._lock:
            self.requests.append(body)
            special = body.get("add_special_tokens", True)
            data = [{"index": i, "object": "pooling", "data": self.rows(t, special)} for i, t in enumerate(texts)]
        return {"id": f"pool-{len(self.requests)}", "object": "list", "model": body.get("model"), "data": data}

    def __enter__(self) -> LoopbackPrmServer:
        server = self

        class Handler(JsonHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.read_json()
                if self.path.rstrip("/") != "/pooling":
                    self.send_json(404, {"object": "error", "message": f"no route {self.path}"})
                elif server.fail_with:
                    self.send_json(server.fail_with, {"object": "error", "message": "model overloaded"})
                elif body.get("model") != server.model_name:
                    message = f"The model `{body.get('model')}` does not exist."
                    self.send_json(404, {"object": "error", "message": message})
                else:
                    self.send_json(200, server.pool(body))

        self._http = LoopbackServer(Handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._http:
            self._http.stop()
