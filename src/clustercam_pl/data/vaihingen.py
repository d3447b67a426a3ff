"""ISPRS Vaihingen patches over a root prepared by ``python -m clustercam_pl.prepare vaihingen``.

As :mod:`clustercam_pl.data.potsdam` with 3-band IRRG patches (see
:mod:`clustercam_pl.data.prepare_vaihingen`).
"""

from __future__ import annotations

from typing import ClassVar

from clustercam_pl.data.prepare_potsdam import ISPRS_CLASSES
from clustercam_pl.data.prepared import PreparedSegmentation


class VaihingenSegmentation(PreparedSegmentation):
    """A split of a prepared Vaihingen root; see :class:`~clustercam_pl.data.prepared.PreparedSegmentation`."""

    name: ClassVar[str] = "vaihingen"
    fixed_classes: ClassVar[tuple[str, ...] | None] = ISPRS_CLASSES
    has_background: ClassVar[bool | None] = False  # as Potsdam: 5 classes, clutter void
    prepare_example: ClassVar[str | None] = (
        "python -m clustercam_pl.prepare vaihingen --root ISPRS_Vaihingen --out DATA_ROOT"
    )
