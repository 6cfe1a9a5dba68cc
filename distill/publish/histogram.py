"""The trace-length histogram on the dataset card (kept vs rejected completion tokens)."""

from __future__ import annotations

from pathlib import Path


def plot_trace_lengths(kept: list[int], rejected: list[int], path: Path) -> Path:
    """Write a PNG histogram of completion tokens; reproducible bytes (no timestamp metadata)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 3.5), dpi=100)
    values = kept + rejected
    bins = min(40, max(5, len(set(values)))) if values else 5
    top = max(values, default=1)
    axes.hist([kept, rejected], bins=bins, range=(0, top), stacked=True, label=["kept", "rejected"],
              color=["#2b8a3e", "#c92a2a"])
    axes.set_xlabel("completion tokens per trace")
    axes.set_ylabel("traces")
    axes.set_title(f"Trace lengths ({len(kept)} kept, {len(rejected)} rejected)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, format="png", metadata={"Software": None})
    plt.close(figure)
    return path
