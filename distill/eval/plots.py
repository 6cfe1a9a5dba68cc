"""PNG plots per set, every model in one figure: pass@k curves, reliability diagram, token-length histograms."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6, 4), dpi=100)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def pass_at_k_plot(set_name: str, runs: dict[str, dict[str, Any]], path: Path) -> None:
    fig, ax = _figure()
    for model, run in runs.items():
        curve = (run.get("clean") or run["all"]).get("pass@k") or {}
        ks = sorted(curve, key=int)
        ax.plot([int(k) for k in ks], [100 * curve[k] for k in ks], marker="o", label=model)
        maj = (run.get("clean") or run["all"]).get("maj@k") or {}
        if maj:
            mks = sorted(maj, key=int)
            ax.plot([int(k) for k in mks], [100 * maj[k] for k in mks], linestyle="--", marker="x",
                    label=f"{model} maj@k")
    ax.set(xlabel="k", ylabel="%", title=f"{set_name}: pass@k (solid), maj@k (dashed)", ylim=(0, 100))
    ax.set_xscale("log", base=2)
    from matplotlib.ticker import ScalarFormatter

    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.legend(fontsize=8)
    _save(fig, path)


def reliability_plot(set_name: str, runs: dict[str, dict[str, Any]], path: Path) -> None:
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for model, run in runs.items():
        calibration = (run.get("clean") or run["all"]).get("calibration")
        if not calibration:
            continue
        points = [(b["confidence"], b["accuracy"]) for b in calibration["bins"] if b["count"]]
        ece = calibration["ece"]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                label=f"{model} (ECE {ece:.3f})" if ece is not None else model)
    ax.set(xlabel="confidence (self-consistency)", ylabel="accuracy", title=f"{set_name}: reliability",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    _save(fig, path)


def tokens_plot(set_name: str, samples: dict[str, list[dict[str, Any]]], path: Path) -> None:
    fig, ax = _figure()
    for model, rows in samples.items():
        tokens = [s["tokens"] for s in rows if s["tokens"] is not None]
        if tokens:
            ax.hist(tokens, bins=30, alpha=0.5, label=model)
    ax.set(xlabel="completion tokens", ylabel="samples", title=f"{set_name}: completion lengths")
    ax.legend(fontsize=8)
    _save(fig, path)


def write_plots(out: Path, results: dict[str, Any], samples: dict[tuple[str, str], list[dict[str, Any]]],
                name: Callable[[str, str], str]) -> list[Path]:
    written = []
    for set_name in results["sets"]:
        runs = {model: sets[set_name] for model, sets in results["runs"].items() if set_name in sets}
        for kind, draw, data in (("passk", pass_at_k_plot, runs), ("reliability", reliability_plot, runs),
                                 ("tokens", tokens_plot, {m: samples[(m, set_name)] for m in runs})):
            path = out / name(kind, set_name)
            draw(set_name, data, path)
            written.append(path)
    return written
