"""Settings of the CAM -> pseudo-label step, validated once where they are made."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from clustercam_pl.data.labels import IGNORE_INDEX


@dataclass(frozen=True)
class CAMConfig:
    """How training turns multi-scale ClusterCAMs into pseudo labels (reference defaults, VOC).

    Attributes:
        cam_layers: how many last blocks' class-to-patch attention weight the CAM (reference 3).
        p2p_refine: propagate CAMs with the patch-to-patch attention summed over all blocks.
        scales: CAM input scales; each is also run mirrored when `flip` (reference 1.0, 0.75, 1.25).
        flip: add the horizontal flip at every scale.
        bg_high, bg_low: constant background scores; a pixel is foreground where the high score
            still loses to a class, background where even the low score wins, ignored in between
            (reference `bg_thr +- ignore_delta` = 0.5 / 0.3 on VOC, 0.53 / 0.33 intended on COCO).
        par_iters, par_dilations: pixel-adaptive refinement (10 iterations, dilations 1..24).
        down_scale: PAR runs at 1 / down_scale resolution (reference 2).
        train_mode: make CAMs with the network in train mode, drop-path active, as the reference
            does; False uses eval mode (deterministic CAMs).
        wrap_uint8: reproduce the reference's uint8 wrap-around when denormalising the image for PAR.
        ignore_index: label value of ignored pixels.
    """

    cam_layers: int = 3
    p2p_refine: bool = True
    scales: Sequence[float] = (1.0, 0.75, 1.25)
    flip: bool = True
    bg_high: float = 0.5
    bg_low: float = 0.3
    par_iters: int = 10
    par_dilations: Sequence[int] = (1, 2, 4, 8, 12, 24)
    down_scale: int = 2
    train_mode: bool = True
    wrap_uint8: bool = True
    ignore_index: int = IGNORE_INDEX
    cam_bg: float = field(default=-1.0)  # background score of the un-refined CAM metric; <0: mean of high/low

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        object.__setattr__(self, "par_dilations", tuple(int(d) for d in self.par_dilations))
        if self.cam_layers < 1:
            raise ValueError(f"cam.cam_layers must be >= 1, got {self.cam_layers}")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"cam.scales must be positive numbers, got {list(self.scales)}")
        if not self.bg_high > self.bg_low:
            raise ValueError(
                f"background scores in the wrong order: cam.bg_high={self.bg_high} must be greater than "
                f"cam.bg_low={self.bg_low}"
            )
        if not (0 <= self.bg_low and self.bg_high <= 1):
            raise ValueError(f"background scores must lie in [0, 1], got {self.bg_low}, {self.bg_high}")
        if self.par_iters < 0 or self.down_scale < 1 or any(d < 1 for d in self.par_dilations):
            raise ValueError(
                f"invalid PAR settings: par_iters={self.par_iters}, down_scale={self.down_scale}, "
                f"par_dilations={list(self.par_dilations)}"
            )

    @property
    def cam_background(self) -> float:
        return (self.bg_high + self.bg_low) / 2 if self.cam_bg < 0 else self.cam_bg

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any], **overrides: Any) -> CAMConfig:
        """The settings a checkpoint stored (`LoadedCheckpoint.cam`; {}: the reference's), `overrides`
        winning; stored keys this version does not know (a newer checkpoint's) are left out."""
        known = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in stored.items() if k in known}, **overrides})
