"""BCSS-WSSS (Han et al., MedIA 2022; patches of BCSS, Amgad et al. 2019) over a root prepared by
``python -m clustercam_pl.prepare bcss``.

Breast cancer patches, 224 x 224 at 0.25 MPP; four tissue classes and no background class: TUM (tumour),
STR (stroma), LYM (lymphocytic infiltrate), NEC (necrosis), ``BCSS_CLASSES``. Splits: ``train`` (23,422
patches, image-level labels from the tags in the file names), ``val`` (3,418) and ``test`` (4,986) with
masks. Image ids are ``<split>/<file name without suffix>``, e.g.
``train/TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500+0[1101]``.

Masks: the release's palette PNGs hold class c as index c and index 4 (white background / excluded) as
void: ``void_values`` states that raw value. The prepared root stores class c as value c and void as
255, like every prepared root, so the scored values are 0..3.
"""

from __future__ import annotations

from typing import ClassVar

from clustercam_pl.data.labels import BCSS_CLASSES, RELEASE_VOID
from clustercam_pl.data.prepared import PreparedSegmentation


class BCSSSegmentation(PreparedSegmentation):
    """A BCSS-WSSS split; see :class:`~clustercam_pl.data.prepared.PreparedSegmentation` for args."""

    name: ClassVar[str] = "bcss"
    fixed_classes: ClassVar[tuple[str, ...] | None] = BCSS_CLASSES
    has_background: ClassVar[bool] = False
    void_values: ClassVar[tuple[int, ...]] = (RELEASE_VOID,)  # of the raw release; 255 in the prepared root
    default_splits: ClassVar[tuple[str, str]] = ("train", "val")
    prepare_example: ClassVar[str | None] = (
        "python -m clustercam_pl.prepare bcss --bcss-root BCSS-WSSS --out DATA_ROOT"
    )
