"""``segments``: merge precomputed per-image masks (any segmenter, run elsewhere) with the labels.

One file per image, ``<root>/<image id>.json``: a list of COCO RLE masks (``{"size": [H, W],
"counts": ...}``), or of records holding one under ``"segmentation"`` (what SAM's automatic mask
generator writes with ``output_mode="coco_rle"``). The merge is the one of the SAM steps
(``_merge.merge_masks``). Needs pycocotools (the ``coco`` extra).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from clustercam_pl.inference.steps import Sample
from clustercam_pl.inference.steps._merge import check_labels, merge_masks
from clustercam_pl.utils.imports import optional_import


def decode_masks(records: list[Any], size: tuple[int, int], where: str) -> np.ndarray:
    """(N, H, W) bool masks of COCO RLE records (or records with a ``segmentation`` RLE)."""
    mask_utils = optional_import("pycocotools.mask", "postprocess step segments", "pycocotools", "coco")
    if not isinstance(records, list):
        raise ValueError(f"{where}: expected a JSON list of COCO RLE masks, got {type(records).__name__}")
    masks = []
    for i, rec in enumerate(records):
        rle = rec.get("segmentation", rec) if isinstance(rec, dict) else None
        if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
            raise ValueError(f"{where}: item {i} is not a COCO RLE ({{'size': [H, W], 'counts': ...}})")
        if tuple(rle["size"]) != tuple(size):
            raise ValueError(f"{where}: mask {i} is {tuple(rle['size'])} but the image is {tuple(size)}")
        if isinstance(rle["counts"], str):
            rle = {"size": rle["size"], "counts": rle["counts"].encode()}
        masks.append(mask_utils.decode(rle).astype(bool))  # (H, W)
    return np.stack(masks) if masks else np.zeros((0, *size), dtype=bool)


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """(N, H, W) bool masks as JSON-ready COCO RLEs (the format this step reads)."""
    from pycocotools import mask as mask_utils

    out = []
    for m in masks:
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        out.append({"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()})
    return out


@dataclass(frozen=True)
class SegmentsStep:
    """Masks from ``root``/<id>.json; ``missing``: "error" or "keep" (an image without a file keeps its labels)."""

    name: ClassVar[str] = "segments"
    root: str = ""
    threshold: float = 0.7  # the share of a mask's labelled pixels a class must exceed (conf/postprocess)
    missing: str = "error"

    def __post_init__(self) -> None:
        if not self.root:
            raise ValueError("postprocess step segments needs root=<folder with one <image id>.json per image>")
        if self.missing not in ("error", "keep"):
            raise ValueError(f"segments: missing={self.missing!r} must be 'error' or 'keep'")

    def __call__(self, sample: Sample) -> Sample:
        labels = sample.label_map()
        check_labels(labels, sample.key)
        path = Path(self.root) / f"{sample.key}.json"
        if not path.is_file():
            if self.missing == "keep":
                return dataclasses.replace(sample, probs=None, labels=labels)
            raise FileNotFoundError(
                f"no segments for image {sample.key!r}: {path} is missing; write it, or pass missing=keep "
                "to keep the labels of images without segments"
            )
        try:
            records = json.loads(path.read_text())
        except ValueError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); write it again") from e
        masks = decode_masks(records, labels.shape, str(path))
        return dataclasses.replace(sample, probs=None, labels=merge_masks(labels, masks, self.threshold))


STEP = SegmentsStep
