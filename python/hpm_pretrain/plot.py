"""A scatter plot with error bars, drawn with PIL (the project's only imaging dependency)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194))


@dataclasses.dataclass(frozen=True)
class Point:
    x: float
    y: float
    x_err: float  # half-width of the error bar (e.g. the std over seeds)
    y_err: float
    series: str  # legend entry; one colour per series
    label: str  # text beside the point


def scatter(
    points: list[Point], path: Path, xlabel: str, ylabel: str, title: str, hline: tuple[float, str] | None = None
) -> Path:
    """Write ``points`` as a PNG: one colour per series (legend on the right), error bars on both
    axes, each point labelled; ``hline`` = (y, label) draws a reference line."""
    W, H, left, right, top, bottom = 980, 600, 70, 250, 34, 50
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    xs = [v for p in points for v in (p.x - p.x_err, p.x + p.x_err)] + [0.0]
    ys = [v for p in points for v in (p.y - p.y_err, p.y + p.y_err)] + ([hline[0]] if hline else [])
    x0, x1 = 0.0, max(xs) * 1.05 or 1.0
    y0, y1 = min(ys) - 0.5, max(ys) + 0.5

    def xy(x: float, y: float) -> tuple[float, float]:
        return left + (x - x0) / (x1 - x0) * (W - left - right), top + (y1 - y) / (y1 - y0) * (H - top - bottom)

    d.text((left, 8), title, fill="black")
    d.rectangle([left, top, W - right, H - bottom], outline="black")
    for k in range(6):
        x = x0 + (x1 - x0) * k / 5
        px, _ = xy(x, y0)
        d.line([px, H - bottom, px, H - bottom + 4], fill="black")
        d.text((px - 12, H - bottom + 8), f"{x:.3g}", fill="black")
        y = y0 + (y1 - y0) * k / 5
        _, py = xy(x0, y)
        d.line([left - 4, py, left, py], fill="black")
        d.text((left - 44, py - 6), f"{y:.1f}", fill="black")
    d.text(((W - right) / 2 - 80, H - 20), xlabel, fill="black")
    d.text((5, top - 14), ylabel, fill="black")
    if hline is not None:
        d.line([xy(x0, hline[0]), xy(x1, hline[0])], fill=(150, 150, 150))
        d.text((xy(x0, hline[0])[0] + 4, xy(x0, hline[0])[1] - 14), hline[1], fill=(110, 110, 110))
    series = list(dict.fromkeys(p.series for p in points))
    colour = {s: COLOURS[i % len(COLOURS)] for i, s in enumerate(series)}
    for p in points:
        c = colour[p.series]
        cx, cy = xy(p.x, p.y)
        d.line([xy(p.x - p.x_err, p.y), xy(p.x + p.x_err, p.y)], fill=c)
        d.line([xy(p.x, p.y - p.y_err), xy(p.x, p.y + p.y_err)], fill=c)
        d.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=c)
        d.text((cx + 6, cy - 12), p.label, fill=c)
    for i, s in enumerate(series):
        y = top + 10 + 18 * i
        d.ellipse([W - right + 14, y - 4, W - right + 22, y + 4], fill=colour[s])
        d.text((W - right + 28, y - 6), s, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path
