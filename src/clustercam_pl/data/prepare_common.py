"""Shared machinery of the VOC and COCO preparation: problem collection, parallel map, report.

Policy: every bad item (missing image, unreadable file, wrong mask size, mask value out of range,
empty training label...) is collected as a :class:`Problem`. At the end the run either refuses with
a :class:`PrepareError` that names the files, or, with ``skip_bad=True`` (CLI ``--skip-bad``), drops
exactly those items, prints them and lists all of them in ``prepare_report.json``. Nothing is dropped
silently.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from clustercam_pl.utils.files import write_text

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)

REPORT_NAME = "prepare_report.json"
_SHOWN = 20  # problems printed in an error message; the report file lists all of them


class PrepareError(ValueError):
    """The input tree is incomplete or has bad items; the message names them."""


@dataclass(frozen=True)
class Problem:
    """One bad item: its image id, the offending file and what is wrong."""

    image_id: str
    path: str
    reason: str

    def __str__(self) -> str:
        where = "" if self.path in self.reason else f" [{self.path}]"
        return f"{self.image_id}: {self.reason}{where}"


def require_path(path: Path, what: str, hint: str = "") -> Path:
    """Raise FileNotFoundError naming ``path`` if it does not exist."""
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}" + (f" ({hint})" if hint else ""))
    return path


def handle_problems(problems: Sequence[Problem], skip_bad: bool) -> set[str]:
    """Refuse (PrepareError naming the files) or, with ``skip_bad``, report and return the ids to drop."""
    if not problems:
        return set()
    lines = "\n  ".join(str(p) for p in problems[:_SHOWN])
    more = f"\n  ... and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
    if not skip_bad:
        raise PrepareError(
            f"{len(problems)} bad item(s):\n  {lines}{more}\n"
            "Fix them, or rerun with --skip-bad to leave these images out (they are then listed in "
            f"{REPORT_NAME})."
        )
    bad = {p.image_id for p in problems}
    log.warning(f"--skip-bad: leaving out {len(bad)} image(s) with problems:\n  {lines}{more}")
    return bad


def run_tasks(
    fn: Callable[[T], R], tasks: Sequence[T], *, workers: int = 0, desc: str = "", progress: bool = True
) -> Iterator[R]:
    """Map ``fn`` over ``tasks`` (in a process pool when ``workers > 0``) with a progress bar.

    Results come back in completion order. ``fn`` must be a module-level function (picklable).
    """
    bar = tqdm(total=len(tasks), desc=desc, unit="img", disable=not progress, dynamic_ncols=True)
    try:
        if workers <= 0 or len(tasks) < 2:
            for t in tasks:
                yield fn(t)
                bar.update()
        else:
            with mp.get_context().Pool(workers) as pool:
                for r in pool.imap_unordered(fn, tasks, chunksize=8):
                    yield r
                    bar.update()
    finally:
        bar.close()


def default_workers() -> int:
    """Processes for the per-image work: the CPUs this process may use, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def class_table(classes: Sequence[str], counts: dict[str, list[int]], sizes: dict[str, int],
                extra: dict[str, list[int]] | None = None) -> str:
    """A text table: one row per class, one column per split, images containing the class; ``extra``
    rows (name -> one count per split, e.g. negatives) at the end."""
    names = list(counts)
    extra = extra or {}
    w = max(len(c) for c in [*classes, "images", *extra]) + 2
    head = "class".ljust(w) + "".join(n.rjust(12) for n in names)
    rows = [head, "-" * len(head), "images".ljust(w) + "".join(str(sizes[n]).rjust(12) for n in names)]
    for c, name in enumerate(classes):
        rows.append(name.ljust(w) + "".join(str(counts[n][c]).rjust(12) for n in names))
    rows += [name.ljust(w) + "".join(str(v).rjust(12) for v in values) for name, values in extra.items()]
    return "\n".join(rows)


def count_classes(ids: Sequence[str], labels: dict[str, list[int]], num_classes: int) -> list[int]:
    """Images per class among ``ids``."""
    counts = [0] * num_classes
    for i in ids:
        for c in labels.get(i, ()):
            counts[c] += 1
    return counts


def write_report(out: Path, report: dict[str, Any]) -> Path:
    """Write ``prepare_report.json`` (counts, skipped items with reasons)."""
    return write_text(out / REPORT_NAME, json.dumps(report, indent=2, default=_jsonable) + "\n")


def _jsonable(o: Any) -> Any:
    if isinstance(o, Problem):
        return asdict(o)
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, set):
        return sorted(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
