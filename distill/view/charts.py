"""Bar charts as inline SVG: the page needs no script library and nothing from the network."""

from __future__ import annotations

from html import escape

WIDTH, HEIGHT, PAD = 560, 180, 28


def bar_chart(bins: list[tuple[str, int]], title: str, color: str = "#4e79a7") -> str:
    """One bar per ``(label, count)``; the count over each bar, every other label under it when crowded."""
    if not bins:
        return ""
    top = max(count for _, count in bins) or 1
    step = (WIDTH - 2 * PAD) / len(bins)
    every = 1 if len(bins) <= 12 else 2
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT + 40}" width="{WIDTH}" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
             f'<text x="{PAD}" y="14" class="chart-title">{escape(title)}</text>']
    for i, (label, count) in enumerate(bins):
        height = (HEIGHT - 2 * PAD) * count / top
        x, y = PAD + i * step, HEIGHT - PAD - height
        parts.append(f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{step - 2:.1f}" height="{height:.1f}" '
                     f'fill="{color}"><title>{escape(label)}: {count}</title></rect>')
        if count:
            parts.append(f'<text x="{x + step / 2:.1f}" y="{y - 3:.1f}" class="chart-n">{count}</text>')
        if i % every == 0:
            parts.append(f'<text x="{x + step / 2:.1f}" y="{HEIGHT - PAD + 14}" class="chart-label" '
                         f'transform="rotate(30 {x + step / 2:.1f} {HEIGHT - PAD + 14})">{escape(label)}</text>')
    parts.append(f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" stroke="#999"/>')
    return "".join(parts) + "</svg>"


def score_color(score: float | None) -> str:
    """A step's background: red at 0, yellow at 0.5, green at 1; grey without a score."""
    if score is None:
        return "hsl(0, 0%, 92%)"
    score = min(max(score, 0.0), 1.0)
    return f"hsl({120 * score:.0f}, 70%, 85%)"
