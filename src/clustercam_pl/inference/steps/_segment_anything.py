"""What the ``sam`` and ``sam2`` steps share: settings, prompts made from the labels, and the merge.

Two modes. ``everything``: the model's automatic mask generator segments the whole image and the
masks are merged with the labels by ``_merge.merge_masks`` (a class takes a mask it covers above
``threshold``). ``prompts``: each connected component of each class (at least ``min_area`` pixels)
becomes a box and a positive point (its most interior pixel); the predicted mask is that class. A
mask prompt alone is not used: SAM does not refine a coarse mask given as its only prompt
(facebookresearch/segment-anything#169), so the boxes and points carry the labels' information.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from scipy import ndimage

from clustercam_pl.inference.steps import IGNORE, Sample
from clustercam_pl.inference.steps._merge import check_labels, merge_masks
from clustercam_pl.utils.device import resolve_device

MODES = ("everything", "prompts")
OUTSIDE = ("keep", "background", "ignore")
_MODELS: dict[tuple[Any, ...], Any] = {}  # per process: a model is loaded once, not once per image


@dataclass(frozen=True)
class Prompt:
    """One connected component of class ``cls`` as SAM prompts (pixel coordinates, x then y)."""

    cls: int
    box: np.ndarray  # (4,) float32 x0, y0, x1, y1
    point: np.ndarray  # (2,) float32 x, y: the component's most interior pixel
    component: np.ndarray  # (H, W) bool


def label_prompts(labels: np.ndarray, min_area: int, background: bool = True) -> list[Prompt]:
    """The prompts of every class component of at least ``min_area`` pixels, largest first; label 0 is
    prompted only where it is a class (``background=False``), not the background."""
    prompts = []
    for c in np.unique(labels):
        if c == IGNORE or (background and c == 0):
            continue
        comps, n = ndimage.label(labels == c)  # (H, W) int, 0 = outside
        for i in range(1, n + 1):
            comp = comps == i  # (H, W)
            if comp.sum() < min_area:
                continue
            ys, xs = np.nonzero(comp)
            depth = ndimage.distance_transform_edt(np.pad(comp, 1))[1:-1, 1:-1]  # (H, W)
            y, x = np.unravel_index(int(depth.argmax()), depth.shape)
            box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)
            prompts.append(Prompt(int(c), box, np.array([x, y], dtype=np.float32), comp))
    return sorted(prompts, key=lambda p: -int(p.component.sum()))


def apply_prompt_masks(labels: np.ndarray, prompts: list[Prompt], masks: list[np.ndarray], outside: str) -> np.ndarray:
    """Labels after each prompt's (H, W) bool mask takes its class (smaller components last, so they win);
    a component's pixels outside its mask stay (``keep``), become background or void (``ignore``)."""
    out = labels.copy()
    fill = {"keep": None, "background": 0, "ignore": IGNORE}[outside]
    if fill is not None:
        for p, m in zip(prompts, masks, strict=True):
            out[p.component & ~m] = fill
    for p, m in zip(prompts, masks, strict=True):
        out[m] = p.cls
    return out


@dataclass(frozen=True)
class SegmentAnythingStep:
    """Settings of both SAM steps; subclasses say how to build the model, the predictor and the generator."""

    name: ClassVar[str] = ""
    model_fields: ClassVar[tuple[str, ...]] = ("checkpoint", "device")  # the settings the model depends on
    checkpoint: str = ""
    mode: str = "prompts"
    threshold: float = 0.7  # everything mode: the share of a mask's labelled pixels a class must exceed
    min_area: int = 16  # prompts mode: smaller components are not prompted (they keep their labels)
    outside: str = "ignore"  # prompts mode: a component's pixels outside its mask
    points_per_side: int = 32  # everything mode: the generator's point grid
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ValueError(f"postprocess step {self.name} needs checkpoint=<the model's .pt/.pth file> "
                             "(the README names the official files)")
        if not Path(self.checkpoint).is_file():
            raise FileNotFoundError(f"{self.name}: checkpoint={self.checkpoint} is not a file; download the "
                                    "official weights (README, 'Judging and refining pseudo labels') and pass its path")
        if self.mode not in MODES:
            raise ValueError(f"{self.name}: mode={self.mode!r} must be one of {MODES}")
        if self.outside not in OUTSIDE:
            raise ValueError(f"{self.name}: outside={self.outside!r} must be one of {OUTSIDE}")

    # ---- what the subclasses provide
    def build_model(self, device: Any) -> Any:
        raise NotImplementedError

    def predictor(self, model: Any) -> Any:
        raise NotImplementedError

    def generator(self, model: Any) -> Any:
        raise NotImplementedError

    # ---- shared
    def model(self) -> Any:
        key = (type(self).__name__, *(getattr(self, f) for f in self.model_fields))
        if key not in _MODELS:
            _MODELS.clear()  # one model per process at a time
            _MODELS[key] = self.build_model(resolve_device(self.device))
        return _MODELS[key]

    def __call__(self, sample: Sample) -> Sample:
        labels = sample.label_map()
        check_labels(labels, sample.key)
        if self.mode == "prompts" and self.outside == "background" and not sample.background:
            raise ValueError(f"{self.name}: outside=background, but the labels of image {sample.key!r} have no "
                             "background class: pass outside=ignore or outside=keep")
        image = np.ascontiguousarray(sample.image)  # (H, W, 3) uint8
        if image.shape[:2] != labels.shape:
            raise ValueError(f"image {sample.key!r}: image {image.shape[:2]} and labels {labels.shape} differ")
        model = self.model()
        if self.mode == "everything":
            records = self.generator(model).generate(image)
            masks = np.stack([r["segmentation"] for r in records]) if records else np.zeros((0, *labels.shape), bool)
            new = merge_masks(labels, masks.astype(bool), self.threshold)
        else:
            prompts = label_prompts(labels, self.min_area, sample.background)
            masks = []
            if prompts:
                predictor = self.predictor(model)
                predictor.set_image(image)
                for p in prompts:
                    m, _, _ = predictor.predict(point_coords=p.point[None], point_labels=np.array([1]),
                                                box=p.box, multimask_output=False)  # (1, H, W)
                    masks.append(np.asarray(m[0]) > 0.5)
            new = apply_prompt_masks(labels, prompts, masks, self.outside)
        return dataclasses.replace(sample, probs=None, labels=new)
