"""The curves of a training run as a PNG, drawn with Pillow: training loss above, held-out recall below."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

SIZE = (960, 720)
BACKGROUND = (255, 255, 255)
AXES = (60, 60, 60)
GRID = (225, 225, 225)
COLOURS = {
    "loss": (31, 119, 180),  # training loss
    "smoothed": (8, 48, 107),  # its running mean
    "eval_loss": (214, 39, 40),  # held-out loss
    "eval_r1": (44, 160, 44),
    "eval_r5": (255, 127, 14),
}
LABELS = {"loss": "training loss", "smoothed": "running mean", "eval_loss": "held-out loss",
          "eval_r1": "held-out R@1", "eval_r5": "held-out R@5"}  # fmt: skip


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def nice_ticks(lo: float, hi: float, count: int = 5, integer: bool = False) -> list[float]:
    """About ``count`` round values (1, 2 or 5 times a power of ten apart, whole numbers when ``integer``)
    covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    if integer:
        step = max(1, round(step))
    first = math.floor(lo / step) * step
    ticks, value = [], first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _label(value: float) -> str:
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}"


def _running_mean(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _panel(draw, box, title: str, series: dict[str, list[tuple[float, float]]], x_max: float,
           y_range: tuple[float, float] | None, empty: str) -> None:  # fmt: skip
    left, top, right, bottom = box
    font, small = _font(15), _font(12)
    draw.text((left, top - 24), title, fill=AXES, font=font)
    draw.rectangle([left, top, right, bottom], outline=AXES)
    draw.text(((left + right) // 2 - 12, bottom + 20), "step", fill=AXES, font=small)
    points = [y for values in series.values() for _, y in values if math.isfinite(y)]
    if not points:
        draw.text((left + 20, (top + bottom) // 2 - 8), empty, fill=AXES, font=font)
        return
    lo, hi = y_range if y_range is not None else (min(points), max(points))
    if y_range is None:
        pad = (hi - lo) * 0.05 or max(abs(hi) * 0.05, 0.05)
        lo, hi = lo - pad, hi + pad
    y_ticks = [t for t in nice_ticks(lo, hi) if lo <= t <= hi]
    x_ticks = [t for t in nice_ticks(0, x_max, 8, integer=True) if 0 <= t <= x_max]

    def at(x: float, y: float) -> tuple[float, float]:
        return (left + (right - left) * x / x_max, bottom - (bottom - top) * (y - lo) / (hi - lo))

    for t in y_ticks:
        _, y = at(0, t)
        draw.line([(left + 1, y), (right - 1, y)], fill=GRID)
        draw.line([(left - 5, y), (left, y)], fill=AXES)
        text = _label(t)
        draw.text((left - 8 - draw.textlength(text, font=small), y - 7), text, fill=AXES, font=small)
    for t in x_ticks:
        x, _ = at(t, lo)
        draw.line([(x, bottom), (x, bottom + 5)], fill=AXES)
        text = _label(t)
        draw.text((x - draw.textlength(text, font=small) / 2, bottom + 6), text, fill=AXES, font=small)
    legend_x = right - 10
    for name, values in reversed(list(series.items())):
        if not values:
            continue
        colour = COLOURS[name]
        xy = [at(x, y) for x, y in values if math.isfinite(y)]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2, joint="curve")
        for x, y in xy if len(xy) <= 60 else []:  # few points: mark each one
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        text = LABELS[name]
        width = draw.textlength(text, font=small)
        legend_x -= width + 34
        draw.line([(legend_x, top + 14), (legend_x + 20, top + 14)], fill=colour, width=3)
        draw.text((legend_x + 24, top + 7), text, fill=AXES, font=small)


def plot_metrics(entries: list[dict[str, Any]], path: str | os.PathLike, size: tuple[int, int] = SIZE) -> Path:
    """Draw a run's log (the entries of ``metrics.jsonl``) to a PNG: training (and held-out) loss in the upper
    panel, held-out R@1 and R@5 in the lower one, both against the step."""
    from PIL import Image, ImageDraw

    width, height = size
    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    steps = [e for e in entries if "step" in e]
    x_max = float(max([e["step"] for e in steps], default=1) or 1)
    loss = [(e["step"], float(e["loss"])) for e in steps if "loss" in e]
    losses = {"loss": loss}
    if len(loss) >= 50:
        smooth = _running_mean([y for _, y in loss], max(5, len(loss) // 25))
        losses["smoothed"] = [(x, y) for (x, _), y in zip(loss, smooth, strict=True)]
    losses["eval_loss"] = [(e["step"], float(e["eval_loss"])) for e in steps if "eval_loss" in e]
    recall = {k: [(e["step"], float(e[k])) for e in steps if k in e] for k in ("eval_r1", "eval_r5")}
    half = height // 2
    left, right = 70, width - 20
    _panel(draw, (left, 40, right, half - 45), "loss", losses, x_max, None, "no training step logged")
    _panel(draw, (left, half + 40, right, height - 45), "held-out recall (%)", recall, x_max, (0.0, 100.0),
           "no held-out evaluation (--eval-data with --eval-every)")  # fmt: skip
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    image.save(temporary, format="PNG")
    os.replace(temporary, path)
    return path
