"""A user's own dataset over a root prepared by ``python -m clustercam_pl.prepare folder``.

Splits: ``train``, ``val`` (and ``test`` when prepared), as chosen at preparation. The classes (K and
their names) come from the prepared root's manifest, and so does whether it has a background class
(``has_background``); masks, where prepared, hold 0 background, c + 1 for channel c, 255 ignore (without
a background class: c for channel c). Image ids are image paths relative to the image folder, without suffix
(``scans/patient_7/001``). Negative images (no class) have an empty label; training keeps them by
default (``negatives="keep"``: all-zero target, all-background pseudo label).
"""

from __future__ import annotations

from typing import ClassVar

from clustercam_pl.data.prepared import PreparedSegmentation


class FolderSegmentation(PreparedSegmentation):
    """A split of a prepared folder dataset; see :class:`~clustercam_pl.data.prepared.PreparedSegmentation`."""

    name: ClassVar[str] = "folder"
    fixed_classes: ClassVar[tuple[str, ...] | None] = None  # the manifest's
    has_background: ClassVar[bool | None] = None  # the manifest's
    default_negatives: ClassVar[str] = "keep"  # a user's negatives are part of the task
    prepare_example: ClassVar[str | None] = (
        "python -m clustercam_pl.prepare folder --images IMAGES --labels labels.csv --val-fraction 0.1 "
        "--out DATA_ROOT"
    )
