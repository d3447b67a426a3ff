"""Writing results: atomic JSON files and the per-class IoU table every command prints."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from clustercam_pl.utils.files import write_text


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The entries that are numbers (tensors included), as floats; non-finite values become NaN."""
    out = {}
    for k, v in metrics.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        out[k] = f if math.isfinite(f) else float("nan")
    return out


def write_text_atomic(path: Path, text: str) -> Path:
    """Text written atomically (`utils.files.write_text`), its folder made first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, text)


def write_metrics(path: Path, metrics: dict[str, Any]) -> Path:
    """JSON (sorted keys) written atomically: a reader never sees half a file."""
    return write_text_atomic(path, json.dumps(metrics, indent=2, sort_keys=True, default=str) + "\n")


def iou_table(per_class: list[float], names: list[str]) -> str:
    rows = [f"{'class':<16} {'IoU':>6}"]
    rows += [f"{n:<16} {100 * v:6.2f}" for n, v in zip(names, per_class, strict=False)]
    return "\n".join(rows)
