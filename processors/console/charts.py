"""The report's figures per prompt version over time, as inline SVG line charts: no script, no asset."""

from __future__ import annotations

from html import escape

from processors.ops.report import Figures

WIDTH, HEIGHT, PAD = 560, 160, 28
COLOURS = ("#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b83280", "#4a5568")
CHARTS = (("automation_rate", "automation", True), ("review_rate", "review", True),
          ("review_override_rate", "override", True), ("escalation_recall", "escalation recall", True),
          ("latency_p95_ms", "p95 latency (ms)", False), ("cost_per_decision_usd", "cost per decision ($)", False))
"""(Figures attribute, title, a rate from 0 to 1)."""


def chart(series: dict[str, list[tuple[int, Figures]]], attribute: str, title: str, rate: bool) -> str:
    """One chart: a line per prompt version, days along, the figure up (0..1 for a rate)."""
    points = {v: [(day, getattr(f, attribute)) for day, f in rows if getattr(f, attribute) is not None]
              for v, rows in series.items()}
    days = sorted({day for rows in points.values() for day, _ in rows})
    values = [value for rows in points.values() for _, value in rows]
    top = 1.0 if rate else max(values, default=0) or 1.0
    x = {day: PAD + (WIDTH - 2 * PAD) * (i / max(len(days) - 1, 1)) for i, day in enumerate(days)}
    y = lambda value: HEIGHT - PAD - (HEIGHT - 2 * PAD) * value / top  # noqa: E731
    parts = [f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
             f'width="{WIDTH}" height="{HEIGHT}"><title>{escape(title)}</title>',
             f'<text x="{PAD}" y="16" class="t">{escape(title)}</text>',
             f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" stroke="#999"/>',
             f'<text x="2" y="{PAD + 4}" class="a">{top:.3g}</text><text x="2" y="{HEIGHT - PAD}" class="a">0</text>']
    for n, (version, rows) in enumerate(sorted(points.items())):
        colour = COLOURS[n % len(COLOURS)]
        path = " ".join(f"{x[day]:.1f},{y(value):.1f}" for day, value in rows)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        parts += [f'<circle cx="{x[day]:.1f}" cy="{y(value):.1f}" r="3" fill="{colour}"><title>{escape(version)}: '
                  f'{value:.4g}</title></circle>' for day, value in rows]
        parts.append(f'<text x="{WIDTH - PAD - 150}" y="{16 + 12 * n}" class="l" fill="{colour}">'
                     f'{escape(version)}</text>')
    if not values:
        parts.append(f'<text x="{WIDTH / 2 - 40}" y="{HEIGHT / 2}" class="a">no data yet</text>')
    parts.append("</svg>")
    return "".join(parts)


def charts(series: dict[str, list[tuple[int, Figures]]]) -> list[str]:
    return [chart(series, attribute, title, rate) for attribute, title, rate in CHARTS]
