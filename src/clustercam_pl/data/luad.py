"""LUAD-HistoSeg (Han et al., MedIA 2022) over a root prepared by ``python -m clustercam_pl.prepare luad``.

Lung adenocarcinoma patches, 224 x 224 at 10x; four tissue classes and no background class: TE (tumour
epithelium), NEC (necrosis), LYM (lymphocyte), TAS (tumour-associated stroma), ``LUAD_CLASSES``.
Splits: ``train`` (16,678 patches, image-level labels from the tags in the file names), ``val`` (300) and
``test`` (307) with masks. Image ids are ``<split>/<file name without suffix>``, e.g.
``train/1031280-2300-27920-[1 0 0 1]``, ``val/385277-44539-46781``.

Masks: the release's palette PNGs hold class c as index c and index 4 (white background / excluded
tissue) as void: ``void_values`` states that raw value. The prepared root stores class c as value c and
void as 255, like every prepared root, so the scored values are 0..3.
"""

from __future__ import annotations

from typing import ClassVar

from clustercam_pl.data.labels import LUAD_CLASSES, RELEASE_VOID
from clustercam_pl.data.prepared import PreparedSegmentation


class LUADSegmentation(PreparedSegmentation):
    """A LUAD-HistoSeg split; see :class:`~clustercam_pl.data.prepared.PreparedSegmentation` for args."""

    name: ClassVar[str] = "luad"
    fixed_classes: ClassVar[tuple[str, ...] | None] = LUAD_CLASSES
    has_background: ClassVar[bool] = False
    void_values: ClassVar[tuple[int, ...]] = (RELEASE_VOID,)  # of the raw release; 255 in the prepared root
    default_splits: ClassVar[tuple[str, str]] = ("train", "val")
    prepare_example: ClassVar[str | None] = (
        "python -m clustercam_pl.prepare luad --luad-root LUAD-HistoSeg --out DATA_ROOT"
    )
