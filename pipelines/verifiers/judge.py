"""An LLM judge: the prompt built from the spec's rubric, the verdict parsed from its reply, and the requests.

The judge is any OpenAI-compatible endpoint (a second vLLM server). It answers a JSON object
``{"score": 0-10, "reason": "…"}``; the score is stored divided by 10 (``judge_score`` in [0, 1]) with the
reason (``judge_reason``, at most 300 characters). Requests go through the generation's retry policy
(``pipelines/teachers/retry.py``): a reply without a readable score counts as a malformed response and is retried.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipelines.spec import JudgeConfig
from pipelines.teachers.retry import BadResponse, TeacherFailure, call_with_retries

MAX_REASON_CHARS = 300
SYSTEM = ("You are a strict, fair grader. Grade the response against the rubric. Reply with only a JSON object: "
          '{"score": <integer 0-10>, "reason": "<one short sentence>"}.')
_SCORE = re.compile(r"\"?score\"?\s*[:=]\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)


@dataclass(frozen=True)
class Verdict:
    score: float  # in [0, 1]
    reason: str


def judge_messages(config: JudgeConfig, problem: str, answer: str, reference: str | None = None,
                   thought: str | None = None) -> list[dict[str, str]]:
    """The chat the judge sees: rubric, problem, the reference when there is one, and the response."""
    parts = [f"Rubric:\n{config.rubric.strip()}", f"Problem:\n{problem.strip()}"]
    if reference:
        parts.append(f"Reference answer:\n{reference.strip()}")
    if thought and config.include_thought:
        parts.append(f"Response reasoning:\n{thought.strip()}")
    parts.append(f"Response (final answer):\n{answer.strip()}")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def parse_verdict(text: str | None) -> Verdict:
    """The score (0-10, clipped, divided by 10) and reason of a judge's reply; BadResponse when it has no score."""
    text = (text or "").strip()
    score: float | None = None
    reason = ""
    for match in reversed(list(re.finditer(r"\{[^{}]*\}", text, re.DOTALL))):
        try:
            payload = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(payload, dict) and isinstance(payload.get("score"), int | float) \
                and not isinstance(payload.get("score"), bool):
            score, reason = float(payload["score"]), str(payload.get("reason") or "")
            break
    if score is None:
        found = _SCORE.findall(text)
        if not found:
            raise BadResponse("judge reply without a score")
        score = float(found[-1])
        reason = _SCORE.sub("", text).strip(" \n{},.")
    reason = " ".join(reason.split())[:MAX_REASON_CHARS]
    return Verdict(round(min(max(score, 0.0), 10.0) / 10.0, 4), reason)


class JudgeClient:
    """Asks the judge endpoint, at most ``max_concurrency`` requests at once, each with the retry policy."""

    def __init__(self, config: JudgeConfig, api_key: str | None = None) -> None:
        self.config = config
        self.api_key = api_key

    async def _one(self, client: Any, room: asyncio.Semaphore, messages: list[dict[str, str]]) -> Verdict:
        async def call() -> Verdict:
            response = await client.chat.completions.create(
                model=self.config.model, messages=messages, temperature=self.config.temperature,
                max_tokens=self.config.max_new_tokens)
            if not response.choices:
                raise BadResponse("judge response without choices")
            return parse_verdict(response.choices[0].message.content)

        async with room:
            return await call_with_retries(call, self.config.max_retries)

    async def _all(self, chats: Sequence[list[dict[str, str]]]) -> list[Verdict | TeacherFailure]:
        from openai import AsyncOpenAI

        client = AsyncOpenAI(base_url=self.config.base_url, api_key=self.api_key or "EMPTY",
                             timeout=self.config.timeout_s, max_retries=0)
        room = asyncio.Semaphore(self.config.max_concurrency)
        try:
            results = await asyncio.gather(*(self._one(client, room, chat) for chat in chats),
                                           return_exceptions=True)
        finally:
            await client.close()
        out: list[Verdict | TeacherFailure] = []
        for result in results:
            if isinstance(result, Verdict | TeacherFailure):
                out.append(result)
            elif isinstance(result, BaseException):
                raise result
        return out

    def judge(self, chats: Sequence[list[dict[str, str]]]) -> list[Verdict | TeacherFailure]:
        """One verdict (or the failure after retries) per chat, in order."""
        return asyncio.run(self._all(chats)) if chats else []
