"""``superpixel``: SLIC superpixels (scikit-image) with a majority vote of the labels inside each.

An offline, fast baseline for label refinement: label edges snap to colour edges where one class
dominates a superpixel. Needs the ``refine`` extra (``pip install clustercam_pl[refine]``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from clustercam_pl.inference.steps import Sample
from clustercam_pl.inference.steps._merge import check_labels, merge_partition
from clustercam_pl.utils.imports import optional_import


@dataclass(frozen=True)
class SuperpixelStep:
    """SLIC with ``n_segments`` regions of ``compactness`` (scikit-image's meaning), then the vote."""

    name: ClassVar[str] = "superpixel"
    n_segments: int = 200
    compactness: float = 10.0
    sigma: float = 1.0
    threshold: float = 0.5  # a class must cover more than this share of a superpixel's labelled pixels

    def __post_init__(self) -> None:
        if self.n_segments < 1 or self.compactness <= 0 or self.sigma < 0:
            raise ValueError(
                f"superpixel: n_segments={self.n_segments} must be >= 1, compactness={self.compactness} > 0, "
                f"sigma={self.sigma} >= 0"
            )

    def __call__(self, sample: Sample) -> Sample:
        slic = optional_import("skimage.segmentation", "postprocess step superpixel", "scikit-image", "refine").slic
        labels = sample.label_map()
        check_labels(labels, sample.key)
        segments = slic(sample.image, n_segments=self.n_segments, compactness=self.compactness,
                        sigma=self.sigma, start_label=0, channel_axis=-1)  # (H, W) int
        return dataclasses.replace(sample, probs=None, labels=merge_partition(labels, segments, self.threshold))


STEP = SuperpixelStep
