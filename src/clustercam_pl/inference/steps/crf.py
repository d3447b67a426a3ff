"""The dense CRF as a post-processing step: the reference's VOC refinement of the probabilities.

The step refines ``sample.probs`` (C, H, W) on ``sample.image`` with `inference.crf.dense_crf` and
passes the CRF marginals on as the new probabilities (labels stay unset: the argmax of the
marginals is the label map, unless a later step decides otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from clustercam_pl.inference.crf import CRFParams, dense_crf, require_crf
from clustercam_pl.inference.steps import Sample


@dataclass(frozen=True)
class CRF(CRFParams):
    """Dense CRF with `CRFParams`' settings (the defaults are the reference's)."""

    name: ClassVar[str] = "crf"

    def __call__(self, sample: Sample) -> Sample:
        if sample.probs is None:
            raise ValueError(
                f"image {sample.key!r}: the crf step needs class probabilities, but an earlier step left "
                "only labels; put crf first in postprocess"
            )
        marginals = dense_crf(sample.image, sample.probs, self)  # (C, H, W) float32
        return replace(sample, probs=marginals, labels=None)

    def require(self) -> None:
        """Fail before any slow work when pydensecrf is missing (names the extra to install)."""
        require_crf()

    def describe(self) -> str:
        return (
            f"dense CRF (Gaussian sxy {self.gauss_sxy:g} compat {self.gauss_compat:g}, bilateral sxy "
            f"{self.bilat_sxy:g} srgb {self.bilat_srgb:g} compat {self.bilat_compat:g}, {self.n_iter} iterations)"
        )


STEP = CRF
