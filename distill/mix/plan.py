"""How many kept traces each source gives to a mix: ratios (normalised) of a total, caps, a seed.

With ratios the total is, unless given, the largest one every source can fill at its ratio, so the mix has the
ratios asked for exactly (up to rounding); caps then bound each source. Without ratios every source gives all
its traces, up to its cap. Which traces a source gives is a seeded sample, the same for the same seed.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from pipelines.spec import SpecError


@dataclass(frozen=True)
class SourceShare:
    name: str
    available: int
    ratio: float | None
    cap: int | None
    rows: int


def parse_assignments(values: list[str], flag: str, names: list[str], kind: type) -> dict[str, float]:
    """``NAME=VALUE`` flags, checked against the source names: one line naming the flag when wrong."""
    out: dict[str, float] = {}
    for value in values:
        name, sep, number = value.partition("=")
        if not sep:
            raise SpecError(f"--{flag}: {value!r} is not NAME=VALUE (e.g. --{flag} {names[0]}=0.5)")
        if name not in names:
            raise SpecError(f"--{flag}: unknown source {name!r} (sources: {', '.join(names)})")
        try:
            parsed = kind(number)
        except ValueError:
            raise SpecError(f"--{flag}: {value!r}: {number!r} is not a{'n integer' if kind is int else ' number'}"
                            ) from None
        if parsed < 0 or (flag == "ratio" and not math.isfinite(parsed)):
            raise SpecError(f"--{flag}: {value!r}: must be positive")
        out[name] = parsed
    return out


def plan_mix(available: dict[str, int], ratios: dict[str, float], caps: dict[str, int],
             total: int | None = None) -> list[SourceShare]:
    """The rows each source gives, in the order of ``available``."""
    names = list(available)
    if ratios:
        missing = [n for n in names if n not in ratios]
        if missing:
            raise SpecError(f"--ratio: give a ratio for every source or none (missing: {', '.join(missing)})")
        weight = sum(ratios.values())
        if weight <= 0:
            raise SpecError("--ratio: the ratios add up to 0")
        share = {n: ratios[n] / weight for n in names}
        reachable = min((available[n] / share[n] for n in names if share[n] > 0), default=0)
        target = reachable if total is None else total
        if total is not None and total > reachable + 1e-9:
            raise SpecError(f"--total: {total} rows at these ratios needs more traces than the sources have "
                            f"(at most {int(reachable)})")
        exact = {n: share[n] * target for n in names}
        counts = {n: int(math.floor(exact[n] + 1e-9)) for n in names}
        # the rounding remainder goes to the largest fractions, within what each source has
        leftover = int(round(target)) - sum(counts.values())
        for n in sorted(names, key=lambda n: (counts[n] - exact[n], names.index(n))):
            if leftover <= 0:
                break
            if counts[n] < available[n] and share[n] > 0:
                counts[n] += 1
                leftover -= 1
    else:
        if total is not None:
            raise SpecError("--total: needs --ratio (without ratios every source gives all its traces)")
        counts = dict(available)
    shares = []
    for n in names:
        rows = min(counts[n], caps[n]) if n in caps else counts[n]
        shares.append(SourceShare(n, available[n], ratios.get(n) if ratios else None, caps.get(n), int(rows)))
    return shares


def sample_indices(available: int, rows: int, seed: int, name: str) -> list[int]:
    """Which of a source's ``available`` traces go in: a seeded sample, in source order."""
    if rows >= available:
        return list(range(available))
    return sorted(random.Random(f"{seed}:{name}").sample(range(available), rows))
