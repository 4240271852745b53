"""Line charts as inline SVG, drawn on the server: nothing to load in the browser, air-gap safe.

Each data point of a chart is one `<circle class="point">`, so a test (or a curious user) can count
what was drawn; a sparkline is one polyline with its point count in `data-points`.
"""

from __future__ import annotations

from html import escape

Point = tuple[float, float]


def _scale(points: list[Point], width: float, height: float, pad: float) -> list[Point]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    dx, dy = (x1 - x0) or 1.0, (y1 - y0) or 1.0
    return [
        (pad + (x - x0) / dx * (width - 2 * pad), height - pad - (y - y0) / dy * (height - 2 * pad)) for x, y in points
    ]


def _polyline(scaled: list[Point]) -> str:
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in scaled)


def sparkline(points: list[Point], width: int = 120, height: int = 28) -> str:
    """A small loss curve for the jobs table; empty when there is nothing to draw."""
    if not points:
        return ""
    scaled = _scale(points, width, height, 2)
    return (
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'data-points="{len(points)}" role="img" aria-label="loss">'
        f'<polyline fill="none" stroke="currentColor" stroke-width="1.5" points="{_polyline(scaled)}"/></svg>'
    )


def line_chart(title: str, points: list[Point], *, width: int = 560, height: int = 220, x_label: str = "step") -> str:
    """A titled chart with its value range and step range written on the axes."""
    label = escape(title)
    if not points:
        return (
            f'<figure class="chart empty" data-series="{label}"><figcaption>{label}: no data yet</figcaption></figure>'
        )
    pad = 36
    scaled = _scale(points, width, height, pad)
    ys = [p[1] for p in points]
    xs = [p[0] for p in points]
    dots = "".join(f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="2.5"/>' for x, y in scaled)
    return (
        f'<figure class="chart" data-series="{label}"><figcaption>{label}</figcaption>'
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{label}">'
        f'<rect class="frame" x="{pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}"/>'
        f'<text x="4" y="{pad + 4}">{max(ys):.4g}</text><text x="4" y="{height - pad}">{min(ys):.4g}</text>'
        f'<text x="{pad}" y="{height - 8}">{escape(x_label)} {min(xs):g}</text>'
        f'<text x="{width - pad}" y="{height - 8}" text-anchor="end">{max(xs):g}</text>'
        f'<polyline fill="none" points="{_polyline(scaled)}"/>{dots}</svg></figure>'
    )
