"""Teacher faults: every failure a teacher server or network produces is retried or recorded, never lost.

Unit tests for the retry policy (pure), then the real ``VLLMServerLLM`` against the loopback teacher with each
fault injected, then a whole ``distill run`` with 10% random faults.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import openai
import pandas as pd
import pytest
from conftest import run_distill, write_jsonl, write_spec

from pipelines.teachers.retry import (
    BadResponse,
    Failure,
    TeacherFailure,
    backoff_s,
    call_with_retries,
    classify,
    describe,
)
from pipelines.teachers.server import VLLMServerLLM
from testing.loopback.faults import FAULT_KINDS, TRANSIENT_KINDS, FaultPlan
from testing.loopback.teacher import LoopbackTeacher

URL = "http://127.0.0.1:9/v1/chat/completions"


def _status_error(cls: type[openai.APIStatusError], status: int, headers: dict[str, str] | None = None):
    response = httpx.Response(status, headers=headers or {}, request=httpx.Request("POST", URL))
    return cls("boom sk-secret-in-message", response=response, body=None)


# ------------------------------------------------------------------ the policy (pure)

def test_classify_each_failure():
    request = httpx.Request("POST", URL)
    cases = {
        "500": (_status_error(openai.InternalServerError, 500), Failure("HTTP 500", True)),
        "503": (_status_error(openai.InternalServerError, 503), Failure("HTTP 503", True)),
        "429": (_status_error(openai.RateLimitError, 429, {"retry-after": "3"}), Failure("HTTP 429", True, 3.0)),
        "429ms": (_status_error(openai.RateLimitError, 429, {"retry-after-ms": "250"}),
                  Failure("HTTP 429", True, 0.25)),
        "429date": (_status_error(openai.RateLimitError, 429, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}),
                    Failure("HTTP 429", True, None)),
        "400": (_status_error(openai.BadRequestError, 400), Failure("HTTP 400", False)),
        "401": (_status_error(openai.AuthenticationError, 401), Failure("HTTP 401", False)),
        "404": (_status_error(openai.NotFoundError, 404), Failure("HTTP 404", False)),
        "reset": (openai.APIConnectionError(request=request), Failure("connection error", True)),
        "timeout": (openai.APITimeoutError(request=request), Failure("timeout", True)),
        "httpx": (httpx.ReadError("reset by peer"), Failure("connection error", True)),
        "json": (json.JSONDecodeError("Unterminated string", "{", 1), Failure("malformed response", True)),
        "empty": (BadResponse("empty choices"), Failure("empty choices", True)),
        "shape": (openai.APIResponseValidationError(httpx.Response(200, request=request), body=None),
                  Failure("malformed response", True)),
        "bug": (KeyError("x"), Failure("KeyError", False)),
    }
    for name, (exc, expected) in cases.items():
        assert classify(exc) == expected, name


def test_recorded_reason_never_carries_the_message():
    failure = classify(_status_error(openai.InternalServerError, 503))
    assert describe(failure, 5) == "HTTP 503 (5 attempts)"
    assert describe(classify(_status_error(openai.BadRequestError, 400)), 1) == "HTTP 400 (not retried)"
    assert "secret" not in str(TeacherFailure(failure, 5))


def test_backoff_doubles_caps_and_honours_retry_after():
    assert [backoff_s(i) for i in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert backoff_s(2, jitter=1.0) == 1.5  # jitter shortens by at most a quarter
    assert backoff_s(0, retry_after_s=3.0) == 3.0
    assert backoff_s(0, retry_after_s=3600.0) == 120.0


def _run_retries(outcomes: list[object], max_retries: int) -> tuple[object, list[float], int]:
    """Feed ``call_with_retries`` a scripted sequence of results/exceptions; returns (result, sleeps, calls)."""
    sleeps: list[float] = []
    calls = 0

    async def call() -> object:
        nonlocal calls
        outcome = outcomes[calls]
        calls += 1
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def main() -> object:
        try:
            return await call_with_retries(call, max_retries, sleep=sleep, jitter=lambda: 0.0)
        except TeacherFailure as failed:
            return failed

    return asyncio.run(main()), sleeps, calls


def test_transient_failures_are_retried_until_success():
    request = httpx.Request("POST", URL)
    outcomes = [_status_error(openai.InternalServerError, 503), openai.APIConnectionError(request=request),
                _status_error(openai.RateLimitError, 429, {"retry-after": "7"}), BadResponse("empty choices"), "ok"]
    result, sleeps, calls = _run_retries(outcomes, max_retries=4)
    assert result == "ok" and calls == 5
    assert sleeps == [0.5, 1.0, 7.0, 4.0]  # backoff doubles; the 429's Retry-After wins over it


def test_exhausted_and_permanent_failures_raise_with_attempts():
    failed, sleeps, calls = _run_retries([_status_error(openai.InternalServerError, 500)] * 3, max_retries=2)
    assert isinstance(failed, TeacherFailure) and str(failed) == "HTTP 500 (3 attempts)" and calls == 3
    failed, sleeps, calls = _run_retries([_status_error(openai.BadRequestError, 400), "never"], max_retries=4)
    assert isinstance(failed, TeacherFailure) and str(failed) == "HTTP 400 (not retried)"
    assert calls == 1 and sleeps == []


def test_fault_plan_rejects_unknown_kinds():
    with pytest.raises(ValueError, match="unknown fault kinds"):
        FaultPlan(always={"X": "explode"})


# ------------------------------------------------------------------ the real client against each fault

ANSWER = "<thought>Add them.\n\nThe sum is 7.</thought>\\boxed{7}"


def _answer(messages: list[dict[str, str]], index: int) -> str:
    return ANSWER


def _generate(teacher: LoopbackTeacher, prompt: str, max_retries: int, n: int = 2, timeout: float = 30.0) -> dict:
    # A short client timeout only where the fault is a hang: on a loaded 2-core CI machine a healthy answer can take
    # longer than half a second, and the timeout would count as one more attempt than the test planned.
    llm = VLLMServerLLM(model="loopback-teacher", base_urls=[teacher.base_url], timeout=timeout,
                        max_retries=max_retries, max_concurrency=4)
    llm.load()
    return asyncio.run(llm.agenerate([{"role": "user", "content": prompt}], num_generations=n, max_new_tokens=64))


@pytest.mark.parametrize("kind", TRANSIENT_KINDS)
def test_each_transient_fault_is_retried_then_succeeds(kind: str):
    plan = FaultPlan(script={"[m]": [kind, kind]}, retry_after_s=0.1, hang_s=30)
    with LoopbackTeacher(_answer, faults=plan) as teacher:
        out = _generate(teacher, f"3 + 4 [m] {kind}", max_retries=3, timeout=2.0 if kind == "hang" else 30.0)
        assert teacher.faults.injected == {kind: 2}
    assert [s["text"] for s in out["samples"]] == [ANSWER, ANSWER]
    assert [s["error"] for s in out["samples"]] == [None, None]
    assert teacher.faults.attempts["[m]"] == 3  # two faults, then the healthy answer


@pytest.mark.parametrize("kind,reason", [("http_503", "HTTP 503"), ("reset", "connection error"),
                                         ("malformed_json", "malformed response"),
                                         ("empty_choices", "empty choices")])
def test_a_fault_that_persists_is_recorded_per_sample(kind: str, reason: str):
    with LoopbackTeacher(_answer, faults=FaultPlan(always={"[x]": kind})) as teacher:
        out = _generate(teacher, "3 + 4 [x]", max_retries=1, n=3)
        assert teacher.faults.injected == {kind: 2}
    assert [s["error"] for s in out["samples"]] == [f"{reason} (2 attempts)"] * 3
    assert all(s["text"] is None for s in out["samples"])


def test_truncation_is_an_answer_not_retried():
    with LoopbackTeacher(_answer, faults=FaultPlan(always={"[t]": "truncated"})) as teacher:
        out = _generate(teacher, "3 + 4 [t]", max_retries=3)
        assert teacher.faults.injected == {"truncated": 1}
    assert [s["finish_reason"] for s in out["samples"]] == ["length", "length"]
    assert [s["text"] for s in out["samples"]] == [ANSWER[: len(ANSWER) // 2]] * 2


def test_an_aborted_completion_is_a_teacher_error_not_an_answer():
    def aborted(messages: list[dict[str, str]], index: int) -> dict:
        return {"content": ANSWER, "finish_reason": "abort" if index == 0 else "stop"}

    with LoopbackTeacher(aborted) as teacher:
        out = _generate(teacher, "3 + 4", max_retries=3)
    assert [s["error"] for s in out["samples"]] == ["finish_reason abort", None]


# ------------------------------------------------------------------ a whole run with 10% faults

PROBLEMS = 80
SAMPLES = 2


def _sum_responder(messages: list[dict[str, str]], index: int) -> str:
    a, b = map(int, re.findall(r"\d+", messages[-1]["content"])[:2])
    return f"<thought>Add {a} and {b}.\n\nThat makes {a + b}.</thought>\\boxed{{{a + b}}}"


def test_run_with_ten_percent_faults_accounts_for_every_sample(tmp_path: Path):
    rows = [{"question": f"What is {i} + {i + 1}?" + (" POISON" if i % 8 == 5 else ""), "answer": str(2 * i + 1)}
            for i in range(PROBLEMS)]
    source = write_jsonl(tmp_path / "sums.jsonl", rows)
    plan = FaultPlan(rate=0.1, seed=7, always={"POISON": "http_429"}, retry_after_s=0.2, hang_s=10)
    with LoopbackTeacher(_sum_responder, faults=plan) as teacher:
        spec = write_spec(tmp_path / "faulty.yaml", source,
                          teacher={"base_url": teacher.base_url, "num_samples": SAMPLES, "timeout_s": 1.0,
                                   "max_retries": 5, "max_concurrency": 8},
                          run={"batch_size": 8})
        out = tmp_path / "out"
        result = run_distill("run", spec, "--out", out)
        injected = dict(teacher.faults.injected)
        random_faults = teacher.faults.random_faults
    frame = pd.read_parquet(out)
    # Every sample exactly once.
    assert len(frame) == PROBLEMS * SAMPLES
    assert not frame.duplicated(["problem_id", "sample_index"]).any()
    poisoned = {str(i) for i in range(PROBLEMS) if i % 8 == 5}
    failed = frame[frame.rejection_reason == "teacher_error"]
    assert set(failed.problem_id) == poisoned and len(failed) == len(poisoned) * SAMPLES
    assert set(failed.error) == {"HTTP 429 (6 attempts)"}
    assert failed.completion.isna().all() and not failed.kept.any()
    # A random truncation is final (an answer that ran out of tokens); every other fault was retried away.
    truncated = frame[frame.rejection_reason == "truncated"]
    assert len(truncated) == injected.get("truncated", 0) * SAMPLES
    assert truncated.finish_reason.eq("length").all() and truncated.error.isna().all()
    healthy = frame[~frame.problem_id.isin(poisoned) & frame.rejection_reason.isna()]
    assert len(healthy) + len(truncated) == (PROBLEMS - len(poisoned)) * SAMPLES
    assert healthy.kept.all() and healthy.error.isna().all()
    for row in healthy.itertuples():
        assert row.completion == _sum_responder([{"content": row.problem}], 0)
    # The random faults really happened, every kind of them, besides the poisoned 429s.
    assert random_faults == sum(injected.values()) - len(poisoned) * 6 >= len(FAULT_KINDS), injected
    assert set(injected) == set(FAULT_KINDS)
    stats = json.loads((out / "__meta__" / "stats.json").read_text())
    print(f"faults injected {dict(sorted(injected.items()))}; reasons {stats['reasons']}")  # docs/reliability.md
    assert stats["samples"] == PROBLEMS * SAMPLES
    assert stats["reasons"]["teacher_error"] == len(poisoned) * SAMPLES
    assert sum(stats["reasons"].values()) == PROBLEMS * SAMPLES
    assert "teacher_error" in result.stdout
