"""The benchmark's simulated teacher: deterministic long-tailed times, vLLM-shaped answers, slot accounting."""

from __future__ import annotations

import asyncio
import importlib.util
import statistics
import sys
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_sim():
    spec = importlib.util.spec_from_file_location("teacher_sim", ROOT / "bench" / "teacher_sim.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("teacher_sim", module)
    spec.loader.exec_module(module)
    return module


sim = _load_sim()


def prompt(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"problem {i}"}]


def test_sequence_time_is_deterministic_per_prompt_seed_and_choice():
    config = sim.SimConfig(seed=3)
    first = sim.sequence_seconds(config, prompt(1), 0)
    assert first == sim.sequence_seconds(sim.SimConfig(seed=3), prompt(1), 0)
    assert first != sim.sequence_seconds(config, prompt(2), 0)
    assert first != sim.sequence_seconds(config, prompt(1), 1)
    assert first != sim.sequence_seconds(sim.SimConfig(seed=4), prompt(1), 0)
    assert sim.sequence_seconds(sim.SimConfig(median_s=0), prompt(1), 0) == 0.0


def test_sequence_times_are_long_tailed_around_the_median_and_capped():
    config = sim.SimConfig(median_s=0.37, sigma=1.3, cap_s=8.0)
    times = [sim.sequence_seconds(config, prompt(i), 0) for i in range(4001)]
    assert 0.33 < statistics.median(times) < 0.41
    assert max(times) == 8.0  # the cap is hit: a real tail
    assert statistics.fmean(times) > 1.8 * statistics.median(times)


def test_tokens_follow_time_and_truncate_at_max_tokens():
    config = sim.SimConfig(tokens_per_s=1000)
    assert sim.sequence_tokens(config, 0.5, None) == (500, 0.5, "stop")
    tokens, seconds, finish = sim.sequence_tokens(config, 0.5, 100)
    assert (tokens, finish) == (100, "length") and seconds == pytest.approx(0.1)
    assert sim.sequence_tokens(config, 0.0, None)[0] == 1


def test_completion_text_parses_as_a_trace():
    from pipelines.trace.parse import parse_trace

    parsed = parse_trace(sim.completion_text(7, full_text=True))
    assert parsed.ok and parsed.answer == "\\boxed{42}" and parsed.thought.split() == ["step"] * 7


def test_server_answers_like_vllm_and_counts_slots():
    config = sim.SimConfig(slots=2, median_s=0.02, sigma=0.3, cap_s=0.1, tokens_per_s=1000)
    body = {"model": "m", "messages": prompt(5), "n": 2, "max_tokens": 4096, "logprobs": True,
            "top_logprobs": 3, "return_tokens_as_token_ids": True}
    with sim.SimThread(config) as server:
        first = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=30).json()
        again = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=30).json()
        models = httpx.get(f"{server.base_url}/models", timeout=30).json()

        async def burst() -> None:
            async with httpx.AsyncClient(timeout=30) as client:
                await asyncio.gather(*(client.post(f"{server.base_url}/chat/completions",
                                                   json={"messages": prompt(i)}) for i in range(8)))

        asyncio.run(burst())
        stats = server.stats()
    assert [c["index"] for c in first["choices"]] == [0, 1]
    assert first["usage"] == again["usage"]  # same prompt, same work
    expected = [sim.sequence_tokens(config, sim.sequence_seconds(config, prompt(5), i), 4096)[0] for i in (0, 1)]
    assert first["usage"]["completion_tokens"] == sum(expected)
    content = first["choices"][0]["logprobs"]["content"]
    assert content and all(len(t["top_logprobs"]) == 3 and t["token"].startswith("token_id:") for t in content)
    assert models["data"][0]["id"] == "sim-teacher"
    assert stats["requests"] == 10 and stats["sequences"] == 12
    assert stats["peak_running"] == 2  # never more sequences than slots, however many requests wait
    assert stats["peak_requests"] > 2
    assert 0 < stats["utilisation"] <= 1.0


def test_spawned_server_stops_cleanly():
    with sim.spawn(sim.SimConfig(slots=4, median_s=0)) as url:
        reply = httpx.post(f"{url}/chat/completions", json={"messages": prompt(1)}, timeout=30).json()
        assert reply["choices"][0]["finish_reason"] == "stop"
        stats = httpx.get(url.removesuffix("/v1") + "/stats", timeout=30).json()
        assert stats["requests"] == 1
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/models", timeout=5)
