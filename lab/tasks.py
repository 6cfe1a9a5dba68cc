"""Seeded task generators with verifiable answers and real step structure.

``addition``: multi-digit addition worked column by column, one thought step per column
(``7 + 8 = 15, carry 1.``); more digits is harder. The gold answer is the sum.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

THOUGHT_TAGS = {"thought": ("<thought>", "</thought>"), "think": ("<think>", "</think>")}
SYSTEM_PROMPT = "Add the numbers column by column inside <thought>...</thought>, then give the sum in \\boxed{}."


@dataclass(frozen=True)
class Example:
    problem: str
    answer: str
    solution: str  # the assistant turn: thought block, blank line, boxed answer


def addition_steps(a: int, b: int) -> list[str]:
    """One step per column, least significant first, with the carry spelled out."""
    steps, carry = [], 0
    da, db = str(a)[::-1], str(b)[::-1]
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        total = x + y + carry
        terms = f"{x} + {y}" + (f" + {carry}" if carry else "")
        carry = total // 10
        steps.append(f"{terms} = {total}" + (f", carry {carry}." if carry else "."))
    if carry:
        steps.append(f"carry {carry} in front.")
    return steps


def addition(rng: random.Random, digits: int = 2, tag: str = "thought") -> Example:
    low, high = 10 ** (digits - 1), 10 ** digits - 1
    a, b = rng.randint(low, high), rng.randint(low, high)
    open_, close = THOUGHT_TAGS[tag]
    thought = "\n".join(addition_steps(a, b))
    return Example(f"{a} + {b}", str(a + b), f"{open_}\n{thought}\n{close}\n\n\\boxed{{{a + b}}}")


def problems(n: int, seed: int, digits: int = 2, held_out: bool = False) -> list[dict[str, str]]:
    """``n`` problems as source rows (question, answer); the held-out split uses a disjoint seed stream."""
    rng = random.Random(f"{'held-out' if held_out else 'train'}-{seed}-{digits}")
    return [{"question": ex.problem, "answer": ex.answer} for ex in (addition(rng, digits) for _ in range(n))]
