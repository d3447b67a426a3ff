"""ISPRS Potsdam patches over a root prepared by ``python -m clustercam_pl.prepare potsdam``.

Splits: ``train`` (the official training tiles) and ``val`` (the official test tiles), cut into
patches by parent tile (see :mod:`clustercam_pl.data.prepare_potsdam`). Five classes (impervious
surfaces, building, low vegetation, tree, car); clutter is void (255). Images: 4-band RGB-IR TIFF
patches, normalised with the per-band mean / std of the training patches stored in the manifest.
"""

from __future__ import annotations

from typing import ClassVar

from clustercam_pl.data.prepare_potsdam import ISPRS_CLASSES
from clustercam_pl.data.prepared import PreparedSegmentation


class PotsdamSegmentation(PreparedSegmentation):
    """A split of a prepared Potsdam root; see :class:`~clustercam_pl.data.prepared.PreparedSegmentation`."""

    name: ClassVar[str] = "potsdam"
    fixed_classes: ClassVar[tuple[str, ...] | None] = ISPRS_CLASSES
    has_background: ClassVar[bool | None] = False  # every pixel is one of the 5 classes or clutter (void)
    in_channels: ClassVar[int] = 4
    prepare_example: ClassVar[str | None] = (
        "python -m clustercam_pl.prepare potsdam --root ISPRS_Potsdam --out DATA_ROOT"
    )
