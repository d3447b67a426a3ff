"""ClusterCAM training losses (method reference, section 2.5; DCVL-WSSS/ClusterCAM ``engine.py``).

``total = w_cls * L_cls + w_patch * L_patch (+ w_seg * L_seg once pseudo labels are used)`` with

* ``L_cls``: multilabel soft-margin loss of the class-token logits;
* ``L_patch``: the same on the patch logits (global average pool of the CAM head);
* ``L_seg``: the balanced background/foreground cross-entropy of the upsampled segmentation logits
  against the PAR-refined pseudo label (``get_seg_loss`` in the reference ``utils.py``); without a
  background class there is nothing to balance: the plain cross-entropy over the labelled pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from clustercam_pl.data.labels import IGNORE_INDEX
from clustercam_pl.utils.checks import check_range


def seg_loss(
    logits_up: torch.Tensor, label: torch.Tensor, ignore_index: int = IGNORE_INDEX, background: bool = True
) -> torch.Tensor:
    """Balanced segmentation loss: ``0.5 * (CE over background pixels + CE over foreground pixels)``.

    Background and foreground are averaged separately so the (usually dominant) background does not
    swamp the foreground classes. A term with no pixels counts as 0, as in the reference; unlike the
    reference this is decided from the pixel counts with ``torch.where`` (no host sync), so a NaN
    coming from the logits themselves is propagated rather than silently zeroed.

    Without a background class (``background=False``) every label value is a class: the plain
    cross-entropy averaged over the pixels that are not ``ignore_index`` (0 when there are none).

    Args:
        logits_up: logits (B, C, H, W) at the label resolution (C = K + 1 with background, K without).
        label: (B, H, W) integer label, 0 = background (with one), ``ignore_index`` = ignored.
        background: the label convention of ``label`` (:mod:`clustercam_pl.data.labels`).
    """
    if logits_up.dim() != 4 or label.shape != (logits_up.shape[0], *logits_up.shape[-2:]):
        raise ValueError(
            f"logits_up must be (B, C, H, W) and label (B, H, W) of the same B, H, W; "
            f"got {tuple(logits_up.shape)} and {tuple(label.shape)}"
        )
    label = label.long()
    ce = F.cross_entropy(logits_up, label, ignore_index=ignore_index, reduction="none")  # (B, H, W)
    ce = ce.float()  # accumulate in float32 even under autocast
    if not background:
        labelled = label != ignore_index  # (B, H, W)
        count = labelled.sum()
        return torch.where(count > 0, torch.where(labelled, ce, 0.0).sum() / count.clamp_min(1), 0.0)
    is_bg = label == 0  # (B, H, W)
    is_fg = (label != 0) & (label != ignore_index)  # (B, H, W)
    terms = []
    for mask in (is_bg, is_fg):
        count = mask.sum()
        total = torch.where(mask, ce, 0.0).sum()
        terms.append(torch.where(count > 0, total / count.clamp_min(1), 0.0))
    return 0.5 * (terms[0] + terms[1])


def clustercam_losses(
    cls_logits: torch.Tensor,
    patch_logits: torch.Tensor,
    seg_logits: torch.Tensor | None,
    cls_label: torch.Tensor,
    pseudo_label: torch.Tensor | None = None,
    w_cls: float = 1.0,
    w_patch: float = 1.0,
    w_seg: float = 0.1,
    ignore_index: int = IGNORE_INDEX,
    background: bool = True,
) -> dict[str, torch.Tensor]:
    """The ClusterCAM losses: a dict with ``cls``, ``patch``, ``seg`` (only with a pseudo label), ``total``.

    Args:
        cls_logits, patch_logits: (B, K) logits.
        seg_logits: decoder logits (B, C, h, w) (C = K + 1 with background, K without); bilinearly
            upsampled (align_corners=False) to the pseudo label's size here. Unused (may be None)
            without a pseudo label.
        cls_label: multi-hot labels (B, K).
        pseudo_label: (B, H, W) label from :func:`clustercam_pl.cam.generate.pseudo_label_step`,
            or None before the segmentation branch is switched on.
        background: the data has a background class (the balanced :func:`seg_loss`), see `NetConfig`.
    """
    if cls_logits.shape != cls_label.shape or patch_logits.shape != cls_label.shape:
        raise ValueError(
            f"cls_logits {tuple(cls_logits.shape)}, patch_logits {tuple(patch_logits.shape)} and "
            f"cls_label {tuple(cls_label.shape)} must all be (B, K)"
        )
    target = cls_label.to(cls_logits.dtype)
    losses = {
        "cls": F.multilabel_soft_margin_loss(cls_logits, target),
        "patch": F.multilabel_soft_margin_loss(patch_logits, target.to(patch_logits.dtype)),
    }
    total = w_cls * losses["cls"] + w_patch * losses["patch"]
    if pseudo_label is not None:
        if seg_logits is None:
            raise ValueError("seg_logits is None but a pseudo_label was given")
        up = F.interpolate(seg_logits, size=pseudo_label.shape[-2:], mode="bilinear", align_corners=False)
        losses["seg"] = seg_loss(up, pseudo_label, ignore_index=ignore_index, background=background)  # up: (B, C, H, W)
        total = total + w_seg * losses["seg"]
    losses["total"] = total
    return losses


@dataclass(frozen=True)
class LossConfig:
    """The weights of the three loss terms (reference 1 / 1 / 0.1), checked once where they are made.

    Pseudo labels and the loss mark unsure pixels with `IGNORE_INDEX`, the masks' void value.
    """

    w_cls: float = 1.0
    w_patch: float = 1.0
    w_seg: float = 0.1

    group: ClassVar[str] = "loss"  # the config group it is built from: messages name `loss.<field>`

    def __post_init__(self) -> None:
        for f in fields(self):
            check_range(f"{self.group}.{f.name}", getattr(self, f.name), ge=0)
            object.__setattr__(self, f.name, float(getattr(self, f.name)))


class ClusterCAMLoss(nn.Module):
    """:func:`clustercam_losses` with the weights of a `LossConfig` bound."""

    def __init__(self, cfg: LossConfig | None = None):
        super().__init__()
        self.cfg = cfg or LossConfig()

    def forward(
        self,
        cls_logits: torch.Tensor,
        patch_logits: torch.Tensor,
        seg_logits: torch.Tensor | None,
        cls_label: torch.Tensor,
        pseudo_label: torch.Tensor | None = None,
        background: bool = True,
    ) -> dict[str, torch.Tensor]:
        c = self.cfg
        return clustercam_losses(cls_logits, patch_logits, seg_logits, cls_label, pseudo_label,
                                 w_cls=c.w_cls, w_patch=c.w_patch, w_seg=c.w_seg, background=background)

    def extra_repr(self) -> str:
        return f"w_cls={self.cfg.w_cls}, w_patch={self.cfg.w_patch}, w_seg={self.cfg.w_seg}"
