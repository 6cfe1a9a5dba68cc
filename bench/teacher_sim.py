"""A loopback OpenAI-compatible server that behaves like a vLLM teacher, for throughput benchmarks.

``--slots`` sequences decode at once (vLLM's ``max_num_seqs``); requests beyond that wait in a queue, as in
vLLM. Each choice of a request holds a slot for a time drawn from a seeded log-normal distribution
(deterministic per prompt and choice index, capped) and reports ``time × --tokens-per-s`` completion tokens
in ``usage``; ``logprobs`` come back when asked for. ``GET /stats`` gives the slot utilisation seen since the
last ``POST /stats/reset``. An asyncio (aiohttp) server, so it holds thousands of concurrent requests.

    python bench/teacher_sim.py --slots 64 --port 8000     # Ctrl-C prints the stats and stops
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import random
import re
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

HOST = "127.0.0.1"


class SimConfig(BaseModel):
    """The simulated teacher: its parallelism and the distribution of sequence times."""

    slots: int = Field(64, ge=1)
    median_s: float = Field(0.37, ge=0.0)  # 0 gives an instant server (pipeline overhead)
    sigma: float = Field(1.3, ge=0.0)  # log-normal shape: 1.3 puts the mean near 2.3x the median
    cap_s: float = Field(8.0, ge=0.0)
    tokens_per_s: float = Field(2048.0, gt=0.0)  # per sequence; 8 s is a 16k-token trace
    seed: int = 0
    model: str = "sim-teacher"
    full_text: bool = False  # content as long as the token count (memory tests), not a short stand-in


def sequence_seconds(config: SimConfig, messages: list[dict[str, Any]], index: int) -> float:
    """Decode time of choice ``index`` for a prompt: the same prompt always takes the same time."""
    if config.median_s == 0:
        return 0.0
    key = json.dumps([config.seed, messages, index], sort_keys=True).encode()
    rng = random.Random(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big"))
    return min(rng.lognormvariate(math.log(config.median_s), config.sigma), config.cap_s)


def sequence_tokens(config: SimConfig, seconds: float, max_tokens: int | None) -> tuple[int, float, str]:
    """Completion tokens, the (possibly shortened) time and the finish reason for a sequence."""
    tokens = max(1, math.ceil(seconds * config.tokens_per_s))
    if max_tokens and tokens > max_tokens:
        return max_tokens, max_tokens / config.tokens_per_s, "length"
    return tokens, seconds, "stop"


def completion_text(tokens: int, full_text: bool) -> str:
    """A parseable trace: a thought and a boxed answer; as many words as tokens when ``full_text``."""
    thought = " ".join(["step"] * tokens) if full_text else f"Simulated reasoning of {tokens} tokens."
    return f"<thought>\n{thought}\n</thought>\n\n\\boxed{{42}}"


def fake_logprobs(text: str, k: int, as_ids: bool) -> dict[str, Any]:
    """Word tokens with a fixed top-k distribution, the sampled token first."""
    content = []
    for word in re.findall(r"\S+\s*", text):
        token_id = zlib.crc32(word.encode()) % 150_000
        tops = [{"token": f"token_id:{token_id + j}" if as_ids else (word if j == 0 else f"{word}#{j}"),
                 "logprob": math.log(0.7 if j == 0 else 0.3 / max(k - 1, 1)), "bytes": None} for j in range(k)]
        content.append({**tops[0], "top_logprobs": tops})
    return {"content": content}


class SlotMeter:
    """What the server saw: requests, tokens, and busy slot-seconds over the span of the traffic."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.reset()

    def reset(self) -> None:
        self.requests = self.sequences = self.completion_tokens = 0
        self.busy_s = 0.0
        self.first_arrival: float | None = None
        self.last_done: float | None = None
        self.open_requests = self.peak_requests = 0
        self.running = self.peak_running = 0

    def arrive(self) -> None:
        self.first_arrival = self.first_arrival or time.monotonic()
        self.open_requests += 1
        self.peak_requests = max(self.peak_requests, self.open_requests)

    def leave(self) -> None:
        self.open_requests -= 1
        self.requests += 1
        self.last_done = time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        span = (self.last_done - self.first_arrival) if self.first_arrival and self.last_done else 0.0
        return {"slots": self.slots, "requests": self.requests, "sequences": self.sequences,
                "completion_tokens": self.completion_tokens, "span_s": round(span, 4),
                "busy_slot_s": round(self.busy_s, 4),
                "utilisation": round(self.busy_s / (self.slots * span), 4) if span else None,
                "requests_per_s": round(self.requests / span, 2) if span else None,
                "tokens_per_s": round(self.completion_tokens / span, 1) if span else None,
                "peak_requests": self.peak_requests, "peak_running": self.peak_running}


class TeacherSim:
    """The server: ``await sim.start()`` returns the base URL, ``await sim.stop()`` closes it."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.meter = SlotMeter(config.slots)
        self._slots: asyncio.Semaphore | None = None
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/stats", self._stats)
        app.router.add_post("/stats/reset", self._reset)
        return app

    async def start(self, port: int = 0) -> str:
        self._slots = asyncio.Semaphore(self.config.slots)
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        # The default listen backlog (128) drops bursts of 256+ new connections into slow SYN retries.
        site = web.TCPSite(self._runner, HOST, port, backlog=4096)
        await site.start()
        bound = self._runner.addresses[0][1]
        self.base_url = f"http://{HOST}:{bound}/v1"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _sequence(self, messages: list[dict[str, Any]], index: int, body: dict[str, Any]) -> dict[str, Any]:
        config = self.config
        tokens, seconds, finish = sequence_tokens(config, sequence_seconds(config, messages, index),
                                                  body.get("max_tokens") or body.get("max_completion_tokens"))
        assert self._slots is not None
        async with self._slots:
            self.meter.running += 1
            self.meter.peak_running = max(self.meter.peak_running, self.meter.running)
            started = time.monotonic()
            try:
                await asyncio.sleep(seconds)
            finally:
                self.meter.running -= 1
                self.meter.busy_s += time.monotonic() - started
        self.meter.sequences += 1
        self.meter.completion_tokens += tokens
        text = completion_text(tokens, config.full_text)
        choice: dict[str, Any] = {"index": index, "message": {"role": "assistant", "content": text},
                                  "finish_reason": finish}
        if body.get("logprobs"):
            choice["logprobs"] = fake_logprobs(text, int(body.get("top_logprobs") or 1),
                                               bool(body.get("return_tokens_as_token_ids")))
        return {"choice": choice, "tokens": tokens}

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        messages = body.get("messages") or []
        self.meter.arrive()
        try:
            done = await asyncio.gather(*(self._sequence(messages, i, body) for i in range(int(body.get("n") or 1))))
        finally:
            self.meter.leave()
        prompt_tokens = max(1, sum(len(str(m.get("content") or "")) for m in messages) // 4)
        completion_tokens = sum(d["tokens"] for d in done)
        return web.json_response({
            "id": f"cmpl-{self.meter.requests}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", self.config.model), "choices": [d["choice"] for d in done],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.config.model, "object": "model"}]})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.meter.snapshot())

    async def _reset(self, request: web.Request) -> web.Response:
        self.meter.reset()
        return web.json_response({"ok": True})


class SimThread:
    """``with SimThread(config) as sim: sim.base_url`` — the server on a background thread (tests)."""

    def __init__(self, config: SimConfig) -> None:
        self.sim = TeacherSim(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="teacher-sim", daemon=True)

    @property
    def base_url(self) -> str:
        return self.sim.base_url

    def stats(self) -> dict[str, Any]:
        return asyncio.run_coroutine_threadsafe(self._snapshot(), self._loop).result(10)

    async def _snapshot(self) -> dict[str, Any]:
        return self.sim.meter.snapshot()

    def __enter__(self) -> SimThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.sim.start(), self._loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.sim.stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@contextlib.contextmanager
def spawn(config: SimConfig, python: str = sys.executable) -> Iterator[str]:
    """Run the server in its own process (so it does not share a GIL with the client); yields the base URL.
    Its final stats line is dropped: ``GET /stats`` gives them while it runs."""
    args = [python, str(Path(__file__).resolve()), "--port", "0", *_config_args(config)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError(f"teacher simulator did not start (exit {proc.poll()}): {line.strip()!r}")
        yield line.split()[-1]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _config_args(config: SimConfig) -> list[str]:
    args = []
    for name, value in config.model_dump().items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args += [flag] if value else []
        else:
            args += [flag, str(value)]
    return args


def parse_args(argv: list[str] | None = None) -> tuple[SimConfig, int]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    defaults = SimConfig()
    for name, field in SimConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(flag, type=type(getattr(defaults, name)), default=getattr(defaults, name))
    args = vars(parser.parse_args(argv))
    port = args.pop("port")
    return SimConfig(**args), port


async def serve(config: SimConfig, port: int) -> dict[str, Any]:
    """Serve until SIGINT/SIGTERM; returns the final stats."""
    sim = TeacherSim(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening on {await sim.start(port)}", flush=True)
    await stop.wait()
    await sim.stop()
    return sim.meter.snapshot()


def main(argv: list[str] | None = None) -> None:
    config, port = parse_args(argv)
    stats = asyncio.run(serve(config, port))
    print(json.dumps(stats), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
