"""Seeded fault injection for the loopback teacher: what real teacher servers and networks do wrong.

A ``FaultPlan`` picks, per chat-completions request, either no fault or one of ``FAULT_KINDS``:
- with probability ``rate`` (seeded) a request fails, the kinds taken in turn so that every kind shows up;
- on every attempt for problems whose prompt contains a marker (``always={"POISON": "http_503"}``),
  which is how a test makes a sample fail for good;
- as a script of successive attempts (``script={"P7": ["reset", "hang"]}``: the third attempt succeeds).
``serve_fault`` then answers the request the way that fault looks on the wire.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

FAULT_KINDS = ("http_500", "http_503", "http_429", "reset", "hang", "malformed_json", "empty_choices",
               "truncated")
# Every kind but "truncated" is a transport or server failure that a retry can cure; a truncated
# completion is a valid answer that ran out of tokens.
TRANSIENT_KINDS = tuple(k for k in FAULT_KINDS if k != "truncated")


@dataclass
class FaultPlan:
    """Which requests fail and how. Default: none."""

    rate: float = 0.0
    kinds: Sequence[str] = FAULT_KINDS
    seed: int = 0
    always: Mapping[str, str] = field(default_factory=dict)  # prompt marker -> fault kind on every attempt
    script: Mapping[str, Sequence[str]] = field(default_factory=dict)  # prompt marker -> faults of attempts 1, 2..
    retry_after_s: float = 1.0  # the Retry-After header of a 429
    hang_s: float = 30.0  # how long a hung request holds the connection (longer than the client timeout)

    def __post_init__(self) -> None:
        scripted = [k for kinds in self.script.values() for k in kinds]
        unknown = [k for k in [*self.kinds, *self.always.values(), *scripted] if k not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; choose from {', '.join(FAULT_KINDS)}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")


class FaultInjector:
    """Draws the fault for each request (thread-safe) and counts what it injected."""

    def __init__(self, plan: FaultPlan) -> None:
        self.plan = plan
        self.injected: Counter[str] = Counter()
        self.log: list[tuple[str, str]] = []  # (fault kind, last user message) per injected fault
        self.attempts: Counter[str] = Counter()  # requests seen per scripted marker
        self.random_faults = 0
        self._rng = random.Random(plan.seed)
        self._lock = threading.Lock()
        self._released = threading.Event()

    def choose(self, body: dict[str, Any]) -> str | None:
        prompt = _last_user_message(body)
        kind = next((k for marker, k in self.plan.always.items() if marker in prompt), None)
        with self._lock:
            marker = next((m for m in self.plan.script if m in prompt), None)
            if kind is None and marker is not None:
                attempt = self.attempts[marker]
                self.attempts[marker] += 1
                script = self.plan.script[marker]
                kind = script[attempt] if attempt < len(script) else None
            elif kind is None and self.plan.rate and self._rng.random() < self.plan.rate:
                kind = self.plan.kinds[self.random_faults % len(self.plan.kinds)]
                self.random_faults += 1
            if kind is not None:
                self.injected[kind] += 1
                self.log.append((kind, prompt))
        return kind

    def release(self) -> None:
        """End every hung request now (the server is shutting down)."""
        self._released.set()

    def hang(self) -> None:
        self._released.wait(self.plan.hang_s)


def _last_user_message(body: dict[str, Any]) -> str:
    users = [m.get("content") or "" for m in body.get("messages") or [] if m.get("role") == "user"]
    return users[-1] if users else ""


def _write(handler: BaseHTTPRequestHandler, status: int, data: bytes, headers: Mapping[str, str] = {}) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)


def _error_body(status: int, message: str) -> bytes:
    return json.dumps({"object": "error", "message": message, "type": "ServerError", "code": status}).encode()


def serve_fault(handler: BaseHTTPRequestHandler, kind: str, injector: FaultInjector,
                complete: Callable[[], dict[str, Any]]) -> None:
    """Answer the request as fault ``kind``; ``complete()`` gives the healthy completion where one is needed."""
    if kind in ("http_500", "http_503"):
        status = int(kind[-3:])
        _write(handler, status, _error_body(status, "injected server error"))
    elif kind == "http_429":
        _write(handler, 429, _error_body(429, "injected rate limit"),
               {"Retry-After": f"{injector.plan.retry_after_s:g}"})
    elif kind == "reset":
        # SO_LINGER with a zero timeout makes close() send a TCP RST instead of a FIN.
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.connection.close()
        handler.close_connection = True
    elif kind == "hang":
        injector.hang()
        handler.close_connection = True
    elif kind == "malformed_json":
        data = json.dumps(complete()).encode()
        _write(handler, 200, data[: len(data) // 2])
    elif kind == "empty_choices":
        _write(handler, 200, json.dumps({**complete(), "choices": []}).encode())
    elif kind == "truncated":
        payload = complete()
        for choice in payload["choices"]:
            content = choice["message"].get("content") or ""
            choice["message"]["content"] = content[: len(content) // 2]
            choice["finish_reason"] = "length"
        _write(handler, 200, json.dumps(payload).encode())
    else:  # pragma: no cover - FaultPlan validates the kinds
        raise ValueError(kind)
