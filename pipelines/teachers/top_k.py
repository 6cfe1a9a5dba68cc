"""The true top k of a position's log-probabilities, shared by the server and in-process teachers."""

from __future__ import annotations

from typing import Any


def true_top_k(entries: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """The k most likely of a position's entries, most likely first."""
    return sorted(entries, key=lambda e: e["logprob"], reverse=True)[:k]
