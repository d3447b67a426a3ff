"""Settings of the CAM -> pseudo-label step, validated once where they are made."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from clustercam_pl.data.labels import IGNORE_INDEX
from clustercam_pl.models.config import NetConfig
from clustercam_pl.utils.checks import check_range


def check_cam_layers(cam_layers: int, net: NetConfig) -> None:
    """`cam_layers` counts the network's last blocks: at most its depth (the one home of this check)."""
    if not 1 <= cam_layers <= net.depth:
        raise ValueError(
            f"cam.cam_layers={cam_layers} must be in 1..{net.depth}, the network's depth (net.depth={net.depth})"
        )


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
        cam_bg: background score of the un-refined CAM metric; None: the mean of bg_high and bg_low.

    Pseudo labels mark unsure pixels with `IGNORE_INDEX` (255), the void value of every mask: a
    property of the label files, not a setting.
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
    cam_bg: float | None = None

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
        if self.cam_bg is not None:
            check_range("cam.cam_bg", self.cam_bg, ge=0, le=1)

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any], source: str, **overrides: Any) -> CAMConfig:
        """The settings a checkpoint stored (`hyper_parameters.cam`), written by any earlier version.

        Earlier versions stored `ignore_index` (dropped: it is the masks' `IGNORE_INDEX`; a checkpoint
        trained with another value is refused, its pseudo labels would not match the masks) and
        `cam_bg < 0` for "the mean" (now None). Keys this version does not know are left out.
        """
        values = dict(stored)
        ignore = values.pop("ignore_index", IGNORE_INDEX)
        if ignore != IGNORE_INDEX:
            raise ValueError(
                f"{source} was trained with cam.ignore_index={ignore}; clustercam_pl now marks ignored pixels "
                f"with {IGNORE_INDEX}, the void value of the masks, only. Retrain it, or export its pseudo "
                "labels with the version that trained it"
            )
        if values.get("cam_bg") is not None and values["cam_bg"] < 0:
            values["cam_bg"] = None
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known} | overrides)

    def check_for(self, net: NetConfig) -> None:
        """Raise ValueError naming the keys when these settings do not fit the network `net`."""
        check_cam_layers(self.cam_layers, net)

    @property
    def cam_background(self) -> float:
        """The un-refined CAM metric's background score."""
        return (self.bg_high + self.bg_low) / 2 if self.cam_bg is None else self.cam_bg
