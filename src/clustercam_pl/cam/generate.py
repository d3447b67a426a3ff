"""Multi-scale ClusterCAMs: the targets the pseudo labels are made from.

Reference: DCVL-WSSS/ClusterCAM utils.py `multi_scale_cam2` (from ToCo).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from clustercam_pl.cam.config import CAMConfig
from clustercam_pl.cam.par import PAR
from clustercam_pl.cam.pseudo_label import denormalize, refine_pseudo_label
from clustercam_pl.models.clustercam import ClusterCAMNet


@torch.no_grad()
def multi_scale_cam(
    net: ClusterCAMNet, images: Tensor, scales: Sequence[float] = (1.0, 0.75, 1.25), flip: bool = True
) -> Tensor:
    """CAMs at several scales (each with its horizontal flip), fused and min-max normalised.

    Per scale: resize bilinearly to (int(s * H), int(s * W)), run the image and its mirror in one
    batch, upsample to (H, W), take the max over the two, ReLU; then sum over scales and normalise
    each (image, class) map to [0, 1] as `(cam - min) / (max - min + 1e-5)`.

    Args:
        images: (B, 3, H, W) ImageNet-normalised.
    Returns:
        (B, K, H, W) in [0, 1]; classes are not masked by the image labels here.
    """
    B, _, H, W = images.shape
    total = None
    for s in scales:
        x = images if s == 1.0 else F.interpolate(
            images, size=(int(s * H), int(s * W)), mode="bilinear", align_corners=False
        )
        if flip:
            x = torch.cat([x, x.flip(-1)], dim=0)  # (2B, 3, h', w')
        cam = F.interpolate(net.cam(x), size=(H, W), mode="bilinear", align_corners=False)  # (nB, K, H, W)
        if flip:
            cam = torch.maximum(cam[:B], cam[B:].flip(-1))
        cam = F.relu(cam)
        total = cam if total is None else total + cam
    total = total - total.amin(dim=(2, 3), keepdim=True)
    return total / (total.amax(dim=(2, 3), keepdim=True) + 1e-5)


@torch.no_grad()
def make_pseudo_labels(
    net: ClusterCAMNet,
    par: PAR,
    cfg: CAMConfig,
    images: Tensor,
    cls_label: Tensor,
    after_cams: Callable[[], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """Label-masked multi-scale CAMs (B, K, H, W) and their PAR-refined pseudo labels (B, H, W).

    The one implementation of the pseudo-label step (training, validation, export, benchmark). A
    network in train mode makes its CAMs in train mode (drop-path on, as the reference) only if
    `cfg.train_mode`, else in eval mode; a network in eval mode stays in it. The mode is restored.
    `after_cams` is called between the CAM passes and PAR (timers).
    """
    was_training = net.training
    net.train(cfg.train_mode and was_training)
    try:
        cams = multi_scale_cam(net, images, cfg.scales, cfg.flip)  # (B, K, H, W)
    finally:
        net.train(was_training)
    if after_cams is not None:
        after_cams()
    cams = cams * cls_label[:, :, None, None].to(cams.dtype)  # absent classes zeroed
    image01 = denormalize(images, wrap_uint8=cfg.wrap_uint8)  # (B, 3, H, W) in [0, 1]
    pseudo = refine_pseudo_label(par, image01, cams, cls_label, cfg.bg_high, cfg.bg_low, cfg.down_scale,
                                 cfg.ignore_index)
    return cams, pseudo
