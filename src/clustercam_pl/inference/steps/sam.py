"""``sam``: label refinement with Segment Anything (ViT-B/L/H; the ``segment-anything`` package, ``sam`` extra).

Settings and modes: ``_segment_anything.SegmentAnythingStep``. ``model_type`` is a key of the
package's ``sam_model_registry`` (vit_b, vit_l, vit_h), ``checkpoint`` the matching official file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from clustercam_pl.inference.steps._segment_anything import SegmentAnythingStep
from clustercam_pl.utils.imports import optional_import


def _package() -> Any:
    return optional_import("segment_anything", "postprocess step sam", "segment-anything", "sam")


@dataclass(frozen=True)
class SamStep(SegmentAnythingStep):
    name: ClassVar[str] = "sam"
    model_fields: ClassVar[tuple[str, ...]] = ("checkpoint", "device", "model_type")
    model_type: str = "vit_b"

    def build_model(self, device: Any) -> Any:
        registry = _package().sam_model_registry
        if self.model_type not in registry:
            raise ValueError(f"sam: model_type={self.model_type!r} is not one of {sorted(registry)}")
        try:
            model = registry[self.model_type](checkpoint=self.checkpoint)
        except RuntimeError as e:  # a state dict of another architecture
            raise ValueError(f"sam: {self.checkpoint} does not fit model_type={self.model_type} ({e}); "
                             "pass the model_type of that file (sam_vit_b_01ec64.pth: vit_b, ...)") from e
        return model.to(device).eval()

    def predictor(self, model: Any) -> Any:
        return _package().SamPredictor(model)

    def generator(self, model: Any) -> Any:
        return _package().SamAutomaticMaskGenerator(
            model, points_per_side=self.points_per_side, pred_iou_thresh=self.pred_iou_thresh,
            stability_score_thresh=self.stability_score_thresh)


STEP = SamStep
