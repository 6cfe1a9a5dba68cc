"""A loopback OpenAI-compatible server that answers chat completions like a vLLM teacher.

A ``responder(messages, index)`` gives the content (and optionally ``reasoning_content`` and
``finish_reason``) of choice ``index``; the server adds ``n`` choices, ``usage``, and ``logprobs`` with
``top_logprobs`` (tokens as ``token_id:<id>`` when ``return_tokens_as_token_ids`` is asked for).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

from testing.loopback.faults import FaultInjector, FaultPlan, serve_fault
from testing.loopback.http import JsonHandler, LoopbackServer

Responder = Callable[[list[dict[str, str]], int], "str | dict[str, Any]"]
# (text, top_k, as_ids) -> {"content": [...]} in the OpenAI logprobs shape; replaces _fake_logprobs when given.
LogprobsFn = Callable[[str, int, bool], dict[str, Any]]


def _fake_logprobs(text: str, k: int, as_ids: bool) -> dict[str, Any]:
    """Character tokens with a deterministic top-k distribution (the chosen token first)."""
    content = []
    for ch in text:
        token_id = ord(ch)
        name = f"token_id:{token_id}" if as_ids else ch
        probs = [0.7] + [0.3 / max(k - 1, 1)] * (k - 1)
        tops = [{"token": name, "logprob": math.log(probs[0]), "bytes": None}]
        for j in range(1, k):
            alt = token_id + j
            tops.append({"token": f"token_id:{alt}" if as_ids else chr(alt), "logprob": math.log(probs[j]),
                         "bytes": None})
        content.append({"token": name, "logprob": math.log(probs[0]), "bytes": None, "top_logprobs": tops})
    return {"content": content}


class LoopbackTeacher:
    """Context manager: ``with LoopbackTeacher(responder) as t: t.base_url`` → ``http://127.0.0.1:PORT/v1``."""

    def __init__(self, responder: Responder, model: str = "loopback-teacher",
                 logprobs_fn: LogprobsFn | None = None, faults: FaultPlan | None = None) -> None:
        self.responder = responder
        # Default off; with a plan, some requests fail like a real server or network would (see faults.py).
        self.faults = FaultInjector(faults) if faults is not None else None
        self.authorizations: set[str] = set()  # Authorization headers seen (tests check the key is sent)
        self.logprobs_fn = logprobs_fn or _fake_logprobs
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._http: LoopbackServer | None = None

    @property
    def base_url(self) -> str:
        assert self._http is not None, "server not started"
        return f"{self._http.url}/v1"

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.requests.append(body)
        choices, completion_tokens = [], 0
        for index in range(int(body.get("n") or 1)):
            reply = self.responder(body["messages"], index)
            reply = {"content": reply} if isinstance(reply, str) else dict(reply)
            message = {"role": "assistant", "content": reply.get("content")}
            if reply.get("reasoning_content") is not None:
                message["reasoning_content"] = reply["reasoning_content"]
            choice: dict[str, Any] = {"index": index, "message": message,
                                      "finish_reason": reply.get("finish_reason", "stop")}
            text = (reply.get("content") or "")
            if body.get("logprobs"):
                choice["logprobs"] = self.logprobs_fn(text, int(body.get("top_logprobs") or 1),
                                                       bool(body.get("return_tokens_as_token_ids")))
            completion_tokens += len(text) + len(reply.get("reasoning_content") or "")
            choices.append(choice)
        prompt_tokens = sum(len(m.get("content") or "") for m in body["messages"])
        return {"id": f"cmpl-{len(self.requests)}", "object": "chat.completion", "created": 0,
                "model": body.get("model", self.model), "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    def __enter__(self) -> LoopbackTeacher:
        teacher = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path.rstrip("/").endswith("/models"):
                    self.send_json(200, {"object": "list", "data": [{"id": teacher.model, "object": "model"}]})
                else:
                    self.send_json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:  # noqa: N802
                body = self.read_json()
                if not self.path.endswith("/chat/completions"):
                    self.send_json(404, {"error": {"message": "not found"}})
                    return
                teacher.authorizations.add(self.headers.get("Authorization") or "")
                fault = teacher.faults.choose(body) if teacher.faults else None
                if fault is not None:
                    serve_fault(self, fault, teacher.faults, lambda: teacher.complete(body))
                    return
                self.send_json(200, teacher.complete(body))

        self._http = LoopbackServer(Handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.faults:
            self.faults.release()
        if self._http:
            self._http.stop()
