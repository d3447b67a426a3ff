"""PASCAL VOC 2012 (+ SBD) over a root prepared by ``python -m clustercam_pl.prepare voc``.

Splits: ``train_aug`` (10,582 on the full data: VOC train + SBD train/val, minus VOC val), ``train``
(1,464), ``val`` (1,449, with masks), ``test`` (1,456, no masks and no labels; only if prepared with
``--test-root``). Masks: 0 background, c + 1 for class c (``VOC_CLASSES`` order), 255 void.
Label sources: ``"xml"`` (default; every ``<object><name>`` of the XML annotation, difficult and
truncated objects included, as the reference's ``cls_labels.npy``) and ``"mask"`` (classes in the mask).
"""

from __future__ import annotations

from typing import ClassVar

from clustercam_pl.data.labels import VOC_CLASSES
from clustercam_pl.data.prepared import PreparedSegmentation


class VOCSegmentation(PreparedSegmentation):
    """PASCAL VOC 2012 split; see :class:`~clustercam_pl.data.prepared.PreparedSegmentation` for args."""

    name: ClassVar[str] = "voc"
    fixed_classes: ClassVar[tuple[str, ...] | None] = VOC_CLASSES
    default_splits: ClassVar[tuple[str, str]] = ("train_aug", "val")
    prepare_example: ClassVar[str | None] = (
        "python -m clustercam_pl.prepare voc --voc-root VOCdevkit/VOC2012 "
        "--sbd-root benchmark_RELEASE/dataset --out DATA_ROOT"
    )
