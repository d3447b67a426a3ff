"""MS COCO 2014 over a root prepared by ``python -m clustercam_pl.prepare coco``.

Splits: ``train`` (82,081 images with at least one annotation) and ``val`` (40,137), both with
VOC-style masks: 0 background, c + 1 for channel c (category ids 1..90 sorted, ``COCO_CLASSES``),
255 for crowd regions and pixels claimed by instances of different classes.
Label sources: ``"annotations"`` (default; every annotated category, crowd included) and ``"mask"``.
Image ids are file stems, e.g. ``COCO_train2014_000000000009``.
"""

from __future__ import annotations

from typing import ClassVar

from clustercam_pl.data.labels import COCO_CLASSES
from clustercam_pl.data.prepared import PreparedSegmentation


class COCOSegmentation(PreparedSegmentation):
    """MS COCO 2014 split; see :class:`~clustercam_pl.data.prepared.PreparedSegmentation` for args."""

    name: ClassVar[str] = "coco"
    fixed_classes: ClassVar[tuple[str, ...] | None] = COCO_CLASSES
    prepare_example: ClassVar[str | None] = "python -m clustercam_pl.prepare coco --coco-root COCO2014 --out DATA_ROOT"
