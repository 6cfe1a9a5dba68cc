"""Teacher LLMs as distilabel LLMs: vLLM's OpenAI-compatible server (default) or in-process engines.

distilabel's own ``OpenAILLM`` drops vLLM's ``reasoning_content``, the finish reason and the sampled
tokens, and fails the whole batch on one error; this adapter keeps all of them per sample.
"""

from __future__ import annotations

import logging
from typing import Any

from distilabel.models.llms.base import AsyncLLM
from pydantic import Field, PrivateAttr

from pipelines.teachers.inflight import EndpointPool
from pipelines.teachers.retry import BadResponse, Failure, TeacherFailure, call_with_retries
from pipelines.teachers.top_k import true_top_k


class VLLMServerLLM(AsyncLLM):
    """Chat completions from one or more OpenAI-compatible servers (vLLM replicas)."""

    model: str
    base_urls: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:8000/v1"])
    api_key: str | None = Field(default=None, exclude=True, repr=False)
    timeout: float = 600.0
    max_retries: int = 4  # per request, by pipelines/teachers/retry.py (the openai client's own are off)
    max_concurrency: int = 64  # requests in flight per endpoint

    _clients: list[Any] = PrivateAttr(default_factory=list)
    _pool: EndpointPool | None = PrivateAttr(default=None)

    def load(self) -> None:
        super().load()
        from openai import AsyncOpenAI

        # openai 2+ sends through "httpx2", which logs every request at INFO; distilabel only silences "httpx",
        # and shipping and rendering one record per request cost more CPU than the requests themselves.
        logging.getLogger("httpx2").setLevel(logging.WARNING)

        self._clients = [
            AsyncOpenAI(base_url=url, api_key=self.api_key or "EMPTY", timeout=self.timeout, max_retries=0)
            for url in self.base_urls
        ]
        # Least-in-flight, not round-robin: a replica stuck on long traces gets fewer new ones.
        self._pool = EndpointPool(len(self._clients), self.max_concurrency)

    @property
    def model_name(self) -> str:
        return self.model

    async def agenerate(  # type: ignore[override]
        self,
        input: list[dict[str, str]],
        num_generations: int = 1,
        max_new_tokens: int = 1024,
        temperature: float = 0.6,
        top_p: float = 0.95,
        top_logprobs: int | None = None,
    ) -> dict[str, Any]:
        """One request with ``n=num_generations``; failures become per-sample errors, never exceptions."""
        kwargs: dict[str, Any] = dict(model=self.model, messages=input, n=num_generations,
                                      max_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        extra_body: dict[str, Any] = {}
        if input and input[-1].get("role") == "assistant":
            # Continue the reply from its start (vLLM renders the chat up to the prefix, without a new turn).
            extra_body.update(continue_final_message=True, add_generation_prompt=False)
        if top_logprobs:
            # One more than asked: vLLM puts the sampled token in the list in place of the k-th when it is
            # outside the top k; of k+1 entries the k highest are always the true top k (see true_top_k).
            kwargs.update(logprobs=True, top_logprobs=top_logprobs + 1)
            extra_body.update(return_tokens_as_token_ids=True, return_token_ids=True)
        if extra_body:
            kwargs["extra_body"] = extra_body
        assert self._pool is not None, "call load() first"
        pool = self._pool

        async def attempt() -> dict[str, Any]:
            # The endpoint is leased per attempt: a backoff holds no slot and a retry may go to another replica.
            async with pool.lease() as endpoint:
                completion = await self._clients[endpoint].chat.completions.create(**kwargs)
            return _from_completion(completion, num_generations, top_logprobs)

        try:
            return await call_with_retries(attempt, self.max_retries, on_retry=self._log_retry)
        except TeacherFailure as failed:
            self._logger.warning(f"teacher request failed: {failed}; its {num_generations} sample(s) are "
                                 "recorded as teacher_error")
            return _failed(num_generations, str(failed))

    def _log_retry(self, failure: Failure, retry: int, delay: float) -> None:
        self._logger.debug(f"teacher: {failure.reason}, retry {retry + 1}/{self.max_retries} in {delay:.1f}s")


def _failed(n: int, error: str) -> dict[str, Any]:
    return {"samples": [{"text": None, "error": error} for _ in range(n)]}


def _from_completion(completion: Any, n: int, top_logprobs: int | None = None) -> dict[str, Any]:
    choices = list(getattr(completion, "choices", None) or [])
    if not choices:
        raise BadResponse("empty choices")  # a server glitch, not an answer: retried
    if any(getattr(choice, "message", None) is None for choice in choices):
        raise BadResponse("malformed response")
    usage = getattr(completion, "usage", None)
    prompt_tokens = getattr(usage, "prompt_tokens", None)
    prompt_token_ids = (getattr(completion, "model_extra", None) or {}).get("prompt_token_ids")
    samples = []
    for choice in choices[:n]:
        message = choice.message
        extra = getattr(message, "model_extra", None) or {}
        reasoning = extra.get("reasoning_content") or extra.get("reasoning")
        sample: dict[str, Any] = {
            "text": message.content,
            "reasoning": reasoning,
            "finish_reason": choice.finish_reason,
            "prompt_tokens": prompt_tokens,
            "error": None if message.content is not None or reasoning else "empty content",
        }
        if choice.finish_reason in ("abort", "error"):  # vLLM cut it off: a partial text is never an answer
            sample["error"] = f"finish_reason {choice.finish_reason}"
        content_logprobs = getattr(getattr(choice, "logprobs", None), "content", None)
        if content_logprobs:
            sample["tokens"] = [t.token for t in content_logprobs]
            sample["token_logprobs"] = [t.logprob for t in content_logprobs]
            sample["logprobs"] = [
                true_top_k([{"token": top.token, "logprob": top.logprob} for top in t.top_logprobs],
                           top_logprobs or len(t.top_logprobs))
                for t in content_logprobs
            ]
            if prompt_token_ids is not None:  # the exact context of these logprobs (KD export checks it)
                sample["prompt_token_ids"] = list(prompt_token_ids)
        samples.append(sample)
    # vLLM reports completion tokens summed over the n choices; spread them when no logprobs say more.
    total = getattr(usage, "completion_tokens", None)
    for sample in samples:
        sample["completion_tokens"] = len(sample["tokens"]) if "tokens" in sample else (
            round(total / len(samples)) if total is not None else None)
    samples += [{"text": None, "error": "missing choice"} for _ in range(n - len(samples))]
    return {"samples": samples}
