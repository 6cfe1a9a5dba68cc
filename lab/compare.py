"""The paired comparison of student recipes (docs/lab.md, STANDARDS "Measuring learning").

Every arm of a seed starts from that seed's init and is evaluated on the same held-out problems, so the per-seed
difference arm - baseline removes the init's share of the spread. Reported per arm: each seed's difference, their
mean with a 95 % t-interval (n - 1 degrees of freedom), and the arm's own seed mean and sd; with the diagnostic
(lab/diagnostic.py) in the same table. Written as markdown, JSON and a plot.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any


def t975(df: int) -> float:
    """t_{0.975}: the two-sided 95 % quantile of Student's t with ``df`` degrees of freedom (scipy)."""
    if df < 1:
        raise ValueError(f"df: {df}; a t-interval needs at least 2 paired values")
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def paired_interval(differences: list[float]) -> dict[str, float]:
    """Mean of the per-seed differences, their sd and the 95 % t-interval of the mean."""
    n = len(differences)
    if n < 2:
        raise ValueError(f"paired_interval: {n} difference(s); the interval needs at least 2 seeds")
    mean = statistics.mean(differences)
    sd = statistics.stdev(differences)
    half = t975(n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "low": mean - half, "high": mean + half}


def paired_comparison(pass1: dict[str, dict[int, float]], baseline: str) -> dict[str, Any]:
    """``pass1[arm][seed]`` (held-out pass@1 as a fraction) → per arm: its seed values, mean and sd, and against
    ``baseline`` the per-seed differences (seeds where both exist) with their paired interval."""
    base = pass1[baseline]
    arms: dict[str, Any] = {}
    for arm, values in pass1.items():
        seeds = sorted(values)
        entry: dict[str, Any] = {"per_seed": {str(s): values[s] for s in seeds},
                                 "mean": statistics.mean(values.values()),
                                 "sd": statistics.stdev(values.values()) if len(values) > 1 else 0.0}
        if arm != baseline:
            paired = [s for s in seeds if s in base]
            differences = {s: values[s] - base[s] for s in paired}
            entry["difference"] = {"per_seed": {str(s): d for s, d in differences.items()},
                                   **(paired_interval(list(differences.values())) if len(paired) >= 2 else {})}
        arms[arm] = entry
    return {"baseline": baseline, "arms": arms}


def _pct(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def comparison_markdown(comparison: dict[str, Any], diagnostics: dict[str, dict[str, float]] | None = None,
                        plot: Path | None = None) -> str:
    """The table: per arm seed mean (sd), per-seed differences to the baseline, their mean [95 % interval], and
    the diagnostic's masses (mean over the arm's seeds), in points (percent)."""
    base = comparison["baseline"]
    k = next((d.get("top_k") for d in (diagnostics or {}).values()), None)
    head = ["arm", "pass@1 mean (sd)", f"per-seed Δ vs {base}", "mean Δ [95 % CI]"]
    if diagnostics:
        head += [f"mass on teacher top-{k}", f"digit mass outside top-{k}"]
    lines = ["", f"Paired against `{base}` (same init and held-out problems per seed; Δ in points of pass@1, "
                 "95 % t-interval over seeds)" + (", with the teacher-forced diagnostic on the teacher's held-out "
                                                  "traces" if diagnostics else "") + ":", "",
             "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for arm, entry in comparison["arms"].items():
        diff = entry.get("difference") or {}
        per_seed = ", ".join(_pct(v, signed=True) for v in diff.get("per_seed", {}).values()) or "–"
        interval = (f"{_pct(diff['mean'], True)} [{_pct(diff['low'], True)}, {_pct(diff['high'], True)}]"
                    if "low" in diff else "–")
        cells = [arm, f"{_pct(entry['mean'])} ({_pct(entry['sd'])})", per_seed, interval]
        if diagnostics:
            d = diagnostics.get(arm)
            cells += [f"{d['topk_mass']:.3f}" if d else "–", f"{d['digit_mass_outside']:.3f}" if d else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    for name in ("teacher", "untrained"):
        if diagnostics and name in diagnostics:
            d = diagnostics[name]
            lines.append(f"\nDiagnostic, {name}: mass on the teacher's top-{k} {d['topk_mass']:.3f}, digit mass "
                         f"outside {d['digit_mass_outside']:.3f}"
                         + (f" (the teacher's own top-{k} mass: {d['teacher_topk_mass']:.3f})" if name == "teacher"
                            else "") + ".")
    if plot is not None:
        lines.append(f"\n![paired differences to {base}]({plot})")
    return "\n".join(lines) + "\n"


def plot_comparison(comparison: dict[str, Any], path: Path) -> Path:
    """Per arm: each seed's difference to the baseline (points) and the mean with its 95 % interval (bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [(a, e["difference"]) for a, e in comparison["arms"].items() if "difference" in e]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * max(1, len(arms)), 3.4))
    for x, (_, diff) in enumerate(arms):
        values = [100 * v for v in diff["per_seed"].values()]
        offsets = [x + 0.12 * (i - (len(values) - 1) / 2) / max(1, len(values) - 1) for i in range(len(values))]
        ax.scatter(offsets, values, s=14, color="tab:gray", zorder=2)
        if "low" in diff:
            mean = 100 * diff["mean"]
            ax.errorbar([x + 0.25], [mean], yerr=[[mean - 100 * diff["low"]], [100 * diff["high"] - mean]],
                        fmt="o", color="tab:blue", capsize=4, zorder=3)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(arms)), [a for a, _ in arms], rotation=30, ha="right")
    ax.set_ylabel(f"held-out pass@1 − {comparison['baseline']} (points)")
    ax.set_title("per seed (gray), mean and 95 % CI (blue)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_comparison(pass1: dict[str, dict[int, float]], baseline: str, out_dir: Path,
                     diagnostics: dict[str, dict[str, float]] | None = None) -> str:
    """``compare.json`` and ``plots/compare-paired.png`` under ``out_dir`` (the run's eval folder); returns the
    markdown."""
    comparison = paired_comparison(pass1, baseline)
    if diagnostics:
        comparison["diagnostic"] = diagnostics
    (out_dir / "compare.json").write_text(json.dumps(comparison, indent=2) + "\n", encoding="utf-8")
    plot = plot_comparison(comparison, out_dir / "plots" / "compare-paired.png")
    return comparison_markdown(comparison, diagnostics, plot)
