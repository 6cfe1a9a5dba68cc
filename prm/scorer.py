"""PrmScorer: split thoughts into steps, encode them for the PRM, score them in batches, judge them."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from prm.aggregate import PrmVerdict, judge
from prm.config import PrmConfig
from prm.encode import EncodedTrace, encode_trace, load_tokenizer
from prm.split import split_steps

log = logging.getLogger("distill.prm")


class Backend(Protocol):
    def score(self, traces: list[EncodedTrace]) -> list[list[float]]: ...


def build_backend(cfg: PrmConfig, tokenizer: Any) -> Backend:
    if cfg.backend == "vllm":
        from prm.backend_vllm import VLLMPoolingBackend

        return VLLMPoolingBackend(cfg, tokenizer)
    from prm.backend_transformers import TransformersBackend

    return TransformersBackend(cfg, tokenizer)


def check_config(cfg: PrmConfig) -> None:
    """Fail early, in the parent process, on a PRM that cannot load (a SpecError naming the field)."""
    load_tokenizer(cfg)
    if cfg.backend == "transformers":
        from prm.backend_transformers import model_loader

        model_loader(cfg)


@dataclass
class ScoringStats:
    """What the scorer did so far: traces scored, left unscored, tokens read, seconds spent."""

    scored: int = 0
    no_steps: int = 0
    too_long: int = 0
    tokens: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        def rate(n: int) -> float | None:
            return round(n / self.seconds, 1) if self.seconds else None

        return {"scored": self.scored, "unscored_no_steps": self.no_steps, "unscored_too_long": self.too_long,
                "tokens": self.tokens, "seconds": round(self.seconds, 3), "traces_per_s": rate(self.scored),
                "tokens_per_s": rate(self.tokens)}


class PrmScorer:
    """Scores (problem, thought) pairs; a trace with no step or over ``max_tokens`` gets None."""

    def __init__(self, cfg: PrmConfig, backend: Backend | None = None, tokenizer: Any | None = None) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer or load_tokenizer(cfg)
        self.backend = backend or build_backend(cfg, self.tokenizer)
        self.stats = ScoringStats()

    def steps(self, thought: str | None) -> list[str]:
        return split_steps(thought, self.cfg.split, self.cfg.split_pattern)

    def step_rewards(self, items: list[tuple[str, list[str]]]) -> list[list[float] | None]:
        """Per-step rewards for (problem, steps) pairs; None where there is no step or it is too long."""
        started = time.perf_counter()
        encoded: list[EncodedTrace | None] = []
        for problem, steps in items:
            trace = encode_trace(self.tokenizer, self.cfg, problem, steps) if steps else None
            if trace is None:
                self.stats.no_steps += 1
            elif len(trace.input_ids) > self.cfg.max_tokens:
                self.stats.too_long += 1
                trace = None
            encoded.append(trace)
        todo = [t for t in encoded if t is not None]
        rewards = iter(self.backend.score(todo) if todo else [])
        self.stats.scored += len(todo)
        self.stats.tokens += sum(len(t.input_ids) for t in todo)
        self.stats.seconds += time.perf_counter() - started
        return [next(rewards) if t is not None else None for t in encoded]

    def score(self, items: list[tuple[str, str | None]]) -> list[PrmVerdict | None]:
        """Verdicts for (problem, thought) pairs."""
        rewards = self.step_rewards([(problem, self.steps(thought)) for problem, thought in items])
        return [judge(r, self.cfg.aggregation, self.cfg.threshold) if r is not None else None for r in rewards]
