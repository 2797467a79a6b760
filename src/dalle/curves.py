"""Training curves as a PNG, drawn with Pillow alone: one panel per series of a run's
``metrics.jsonl`` (the loss, every other ``*_loss``, and the learning rate) against the step."""

from __future__ import annotations

import json
import math
from pathlib import Path

from PIL import Image, ImageDraw

PANEL_W, PANEL_H, MARGIN = 480, 220, 48
LINE = (31, 119, 180)


def read_metrics(path: Path) -> list[dict]:
    """The JSON lines of ``metrics.jsonl``; a missing, empty or garbled file is a ValueError."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist (expected a run folder with metrics.jsonl)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path} is not UTF-8 text (byte {e.start}); expected JSON lines"
        ) from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{n}: not a JSON line") from None
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
            rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no metrics yet")
    return rows


def series_names(rows: list[dict]) -> list[str]:
    """``loss``, then the other ``*_loss`` keys in first-seen order, then ``lr``."""
    keys = dict.fromkeys(k for r in rows for k in r)
    names = ["loss"] + [k for k in keys if k.endswith("_loss") and k != "loss"] + ["lr"]
    return [k for k in names if k in keys]


def _panel(name: str, points: list[tuple[float, float]]) -> Image.Image:
    image = Image.new("RGB", (PANEL_W, PANEL_H), "white")
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = MARGIN, 20, PANEL_W - 12, PANEL_H - 28
    draw.rectangle([x0, y0, x1, y1], outline=(160, 160, 160))
    draw.text((x0, 4), name, fill="black")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    lo_x, hi_x = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    lo_y, hi_y = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

    def at(x: float, y: float) -> tuple[float, float]:
        return (
            x0 + (x - lo_x) / (hi_x - lo_x) * (x1 - x0),
            y1 - (y - lo_y) / (hi_y - lo_y) * (y1 - y0),
        )

    if len(points) > 1:
        draw.line([at(x, y) for x, y in points], fill=LINE, width=2)
    else:
        cx, cy = at(*points[0])
        draw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=LINE)
    draw.text((4, y0), f"{hi_y:.3g}", fill="black")
    draw.text((4, y1 - 10), f"{lo_y:.3g}", fill="black")
    draw.text((x0, y1 + 6), f"step {lo_x:g}", fill="black")
    draw.text((x1 - 70, y1 + 6), f"step {hi_x:g}", fill="black")
    return image


def plot_metrics(rows: list[dict]) -> Image.Image:
    """One panel per series of :func:`series_names`, stacked vertically."""
    panels = []
    for name in series_names(rows):
        points = [
            (float(r["step"]), float(r[name]))
            for r in rows
            if isinstance(r.get(name), (int, float)) and math.isfinite(r[name])
        ]
        if points:
            panels.append(_panel(name, points))
    if not panels:
        raise ValueError("no loss or learning-rate values to plot")
    sheet = Image.new("RGB", (PANEL_W, PANEL_H * len(panels)), "white")
    for i, panel in enumerate(panels):
        sheet.paste(panel, (0, i * PANEL_H))
    return sheet
