"""Cost up front and as it goes, for every batch command (eval, export_labels, predict, refine, audit).

A day-long evaluation should say early how long it will take and how much disk it will fill, not
at its end. :class:`CostMeter` is a tqdm bar (images/s and ETA, main process only) that, once the
first `probe` images are done, logs an estimate of the whole share's time and disk from them (the
first batch's time, warm-up included, once; the rest at the rate of the images after it) and keeps
it for the summary.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

log = logging.getLogger("clustercam_pl.progress")


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class CostMeter:
    """A progress bar over `total` images that estimates the time and disk of all of them after `probe`.

    `update(n, paths)`: `n` more images done, having written the files `paths` (their sizes count
    toward the disk estimate). `estimate()`: {"estimate_s", "estimate_bytes", "bytes"} for summaries.
    """

    def __init__(self, total: int, desc: str, enabled: bool = True, probe: int = 4) -> None:
        self.total, self.desc, self.enabled = int(total), desc, enabled
        self.probe = max(1, min(int(probe), self.total)) if self.total else 0
        self.done, self.bytes = 0, 0
        self.t0 = time.perf_counter()
        self.estimate_s: float | None = None
        self.estimate_bytes: int | None = None
        self.first = (0.0, 0)  # (seconds, images) when the first images were done
        self.bar = tqdm(total=self.total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True)

    def update(self, n: int = 1, paths: tuple[str | os.PathLike, ...] = ()) -> None:
        self.bytes += sum(Path(p).stat().st_size for p in paths)
        before, self.done = self.done, self.done + n
        self.bar.update(n)
        now = time.perf_counter()
        if before == 0:  # the first batch: start-up and warm-up, counted once
            self.first = (now - self.t0, self.done)
        if before < self.probe <= self.done:
            elapsed = now - self.t0
            (t_first, n_first), steady = self.first, self.done - self.first[1]
            if steady > 0:  # the first batch's time + the rest at the rate of the images after it
                self.estimate_s = t_first + (elapsed - t_first) / steady * (self.total - n_first)
            else:
                self.estimate_s = elapsed * self.total / self.done
            self.estimate_bytes = round(self.bytes * self.total / self.done)
            if self.enabled:
                log.info("%s: estimate from the first %d images: %.1f s for all %d (%.2f images/s), "
                         "%s on disk", self.desc, self.done, self.estimate_s, self.total,
                         self.done / elapsed if elapsed > 0 else float("inf"), human_bytes(self.estimate_bytes))

    def close(self) -> None:
        self.bar.close()

    def estimate(self) -> dict[str, Any]:
        return {"estimate_s": None if self.estimate_s is None else round(self.estimate_s, 3),
                "estimate_bytes": self.estimate_bytes, "bytes": self.bytes}
