"""Small inline-SVG charts for the HTML report: lines (linear or log x), log2 histograms
as steps, horizontal stacked bars. Text only, no JavaScript, no external file: the report
opens offline and prints. Every string drawn is escaped."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

FONT = 'font-family="system-ui, sans-serif" font-size="11"'


@dataclass(frozen=True)
class Line:
    label: str
    color: str
    points: Sequence[tuple[float, float]]
    dashed: bool = False


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks = []
    v = first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 10))
        v += step
    return ticks


def fmt_tick(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:g}M"
    if a >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


class _Frame:
    def __init__(self, width: int, height: int, left: int = 52, right: int = 12,
                 top: int = 40, bottom: int = 40) -> None:  # fmt: skip
        self.w, self.h = width, height
        self.x0, self.x1 = left, width - right
        self.y0, self.y1 = height - bottom, top

    def sx(self, t: float) -> float:
        return self.x0 + t * (self.x1 - self.x0)

    def sy(self, t: float) -> float:
        return self.y0 - t * (self.y0 - self.y1)


def _open(width: int, height: int, title: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{width / 2:.0f}" y="14" text-anchor="middle" {FONT} font-weight="600">'
        f"{escape(title)}</text>",
    ]


def _legend(
    parts: list[str], items: Sequence[tuple[str, str]], x: float, y: float, column: float = 0
) -> None:
    """Swatches with labels in a row: at fixed `column` widths, or packed by label length."""
    for label, color in items:
        parts.append(f'<rect x="{x:.1f}" y="{y - 8:.1f}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{x + 14:.1f}" y="{y + 1:.1f}" {FONT}>{escape(label)}</text>')
        x += column or 22 + 6.2 * len(label)


def line_chart(
    title: str,
    lines: Sequence[Line],
    x_label: str,
    y_label: str,
    width: int = 560,
    height: int = 240,
    y_max: float | None = None,
    log_x: bool = False,
) -> str:
    f = _Frame(width, height)
    parts = _open(width, height, title)
    pts = [p for line in lines for p in line.points if not log_x or p[0] > 0]
    if not pts:
        parts.append(
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" {FONT}>no data</text></svg>'
        )
        return "".join(parts)
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    if log_x:
        lx0, lx1 = math.floor(math.log10(min(xs))), math.ceil(math.log10(max(xs)))
        lx1 = max(lx1, lx0 + 1)

        def tx(v: float) -> float:
            return (math.log10(max(v, 10**lx0)) - lx0) / (lx1 - lx0)

        xticks = [10.0**e for e in range(lx0, lx1 + 1)]
    else:
        xt = nice_ticks(min(xs), max(xs))
        lo, hi = xt[0], xt[-1]

        def tx(v: float) -> float:
            return (v - lo) / (hi - lo) if hi > lo else 0.5

        xticks = xt
    top = y_max if y_max is not None else max(ys) * 1.05 or 1.0
    yticks = nice_ticks(0.0, top)
    ytop = yticks[-1]
    for v in yticks:
        y = f.sy(v / ytop)
        parts.append(f'<line x1="{f.x0}" x2="{f.x1}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        parts.append(
            f'<text x="{f.x0 - 4}" y="{y + 3:.1f}" text-anchor="end" {FONT}>{fmt_tick(v)}</text>'
        )
    for v in xticks:
        x = f.sx(tx(v))
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{f.y0}" y2="{f.y0 + 4}" stroke="#888"/>')
        parts.append(
            f'<text x="{x:.1f}" y="{f.y0 + 15}" text-anchor="middle" {FONT}>{fmt_tick(v)}</text>'
        )
    parts.append(f'<line x1="{f.x0}" x2="{f.x1}" y1="{f.y0}" y2="{f.y0}" stroke="#888"/>')
    parts.append(
        f'<text x="{(f.x0 + f.x1) / 2:.0f}" y="{height - 4}" text-anchor="middle" {FONT}>{escape(x_label)}</text>'
    )
    parts.append(
        f'<text transform="translate(12 {(f.y0 + f.y1) / 2:.0f}) rotate(-90)" text-anchor="middle" {FONT}>{escape(y_label)}</text>'
    )
    for line in lines:
        coords = " ".join(
            f"{f.sx(tx(x)):.1f},{f.sy(min(y, ytop) / ytop):.1f}"
            for x, y in line.points
            if not log_x or x > 0
        )
        dash = ' stroke-dasharray="5 3"' if line.dashed else ""
        parts.append(
            f'<polyline class="series" data-label="{escape(line.label)}" points="{coords}" fill="none" '
            f'stroke="{line.color}" stroke-width="1.8"{dash}/>'
        )
    _legend(parts, [(line.label, line.color) for line in lines], f.x0, f.y1 - 10)
    parts.append("</svg>")
    return "".join(parts)


def log2_steps(buckets: Sequence[tuple[int, int, int]]) -> list[tuple[float, float]]:
    """(low, high, count) log2 buckets to step points (x = bucket bounds, y = % of all)."""
    total = sum(c for _, _, c in buckets)
    if not total:
        return []
    pts: list[tuple[float, float]] = []
    for low, high, count in buckets:
        y = 100.0 * count / total
        pts.append((max(low, 0.5), y))
        pts.append((high + 1, y))
    return pts


def stacked_bars(
    title: str,
    rows: Sequence[tuple[str, Sequence[tuple[str, float, str]]]],
    width: int = 760,
    bar_height: int = 26,
) -> str:
    """One horizontal bar per row, segments (label, percent, color) adding up to 100."""
    legend: dict[str, str] = {}
    for _, segs in rows:
        for label, _, color in segs:
            legend.setdefault(label, color)
    per_row = 2
    legend_rows = math.ceil(len(legend) / per_row)
    height = 34 + len(rows) * (bar_height + 10) + 18 * legend_rows + 24
    parts = _open(width, height, title)
    left, right = 96, width - 16
    y = 30
    for name, segs in rows:
        parts.append(
            f'<text x="{left - 6}" y="{y + bar_height / 2 + 4:.0f}" text-anchor="end" {FONT}>{escape(name)}</text>'
        )
        x = float(left)
        for label, pct, color in segs:
            w = (right - left) * pct / 100.0
            if w <= 0:
                continue
            parts.append(
                f'<rect class="segment" x="{x:.2f}" y="{y}" width="{w:.2f}" height="{bar_height}" '
                f'fill="{color}" data-label="{escape(label)}" data-pct="{pct:.4f}">'
                f"<title>{escape(name)}: {escape(label)} {pct:.1f}%</title></rect>"
            )
            if w > 34:
                parts.append(
                    f'<text x="{x + w / 2:.1f}" y="{y + bar_height / 2 + 4:.0f}" text-anchor="middle" '
                    f'{FONT} fill="#fff">{pct:.0f}%</text>'
                )
            x += w
        y += bar_height + 10
    for i in range(0, 101, 25):
        x = left + (right - left) * i / 100
        parts.append(f'<text x="{x:.0f}" y="{y + 4}" text-anchor="middle" {FONT}>{i}%</text>')
    items = list(legend.items())
    for r in range(legend_rows):
        row = items[r * per_row : (r + 1) * per_row]
        _legend(parts, row, left, y + 22 + 18 * r, column=(right - left) / per_row)
    parts.append("</svg>")
    return "".join(parts)
