"""Pseudo labels for the segmentation branch: CAMs + background score, refined by PAR.

Follows ``refine_cams_with_bkg_v2`` and ``denormalize_img2`` of DCVL-WSSS/ClusterCAM ``utils.py``
(method reference, section 2.4), vectorised over the batch. Data without a background class
(histopathology, remote sensing) uses :func:`refine_without_background`: the same softmax over the
present classes and the same PAR, without a background score, so without thresholds or an ignore band.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from clustercam_pl.cam.par import PAR
from clustercam_pl.data.labels import IGNORE_INDEX
from clustercam_pl.data.transforms import IMAGENET_MEAN, IMAGENET_STD


def denormalize(
    image: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    wrap_uint8: bool = True,
) -> torch.Tensor:
    """Undo the normalisation of ``image`` (..., 3, H, W) to [0, 1] on the 256-level uint8 grid.

    This reproduces the reference's ``denormalize_img2``: ``v = x * std * 255 + mean * 255`` computed
    in the image's dtype, cast to uint8, divided by 255. The cast **truncates** (so a pixel that was
    exactly ``p`` may come back as ``p - 1`` after rounding error) and **wraps modulo 256**, so a
    value pushed out of range (e.g. -3 by random-erasing noise) comes back as 253, i.e. near white.
    The truncate-and-wrap is spelled out here (trunc, then ``& 255``) instead of relying on the
    float -> uint8 cast, whose out-of-range behaviour is undefined in C++ and differs across devices;
    it equals torch's CPU ``.type(torch.uint8)``.

    With ``wrap_uint8=False`` out-of-range values are clamped to [0, 255] instead (the sane variant);
    in-range values are identical in both modes.
    """
    if image.shape[-3] != len(mean) or len(mean) != len(std):
        raise ValueError(
            f"image has {image.shape[-3]} channels (shape {tuple(image.shape)}) but mean has "
            f"{len(mean)} and std {len(std)} entries"
        )
    # Scale in float64 then cast: for float32 images this gives the reference's constants exactly.
    mean255 = (torch.tensor(mean, dtype=torch.float64) * 255).to(image.device, image.dtype).view(-1, 1, 1)
    std255 = (torch.tensor(std, dtype=torch.float64) * 255).to(image.device, image.dtype).view(-1, 1, 1)
    value = image * std255 + mean255  # (..., 3, H, W) in [0, 255] unless out of range
    if wrap_uint8:
        levels = value.trunc().to(torch.int64).bitwise_and(255)  # uint8 wrap-around
    else:
        levels = value.clamp(0, 255).trunc()
    return levels.to(image.dtype) / 255


def valid_cams(cams: torch.Tensor, cls_label: torch.Tensor) -> torch.Tensor:
    """CAMs (B, K, H, W) with the classes absent from ``cls_label`` (B, K) zeroed (ref. ``cam_to_label``)."""
    if cams.shape[:2] != cls_label.shape:
        raise ValueError(
            f"cams {tuple(cams.shape)} and cls_label {tuple(cls_label.shape)} disagree on (B, K)"
        )
    return cams * cls_label.to(cams.dtype)[:, :, None, None]  # (B, K, H, W)


def _check_inputs(image01: torch.Tensor, cams: torch.Tensor, cls_label: torch.Tensor, down_scale: int) -> None:
    """The shapes both refinements expect: image01 (B, 3, H, W), cams (B, K, H, W), cls_label (B, K)."""
    if down_scale < 1:
        raise ValueError(f"down_scale must be >= 1, got {down_scale}")
    if cams.dim() != 4 or cls_label.dim() != 2 or cams.shape[:2] != cls_label.shape:
        raise ValueError(
            f"cams must be (B, K, H, W) and cls_label (B, K), "
            f"got {tuple(cams.shape)} and {tuple(cls_label.shape)}"
        )
    if image01.dim() != 4 or image01.shape[0] != cams.shape[0] or image01.shape[-2:] != cams.shape[-2:]:
        raise ValueError(
            f"image01 {tuple(image01.shape)} must be (B, 3, H, W) with the batch and size of cams "
            f"{tuple(cams.shape)}"
        )


def refine_with_background(
    par: PAR,
    image01: torch.Tensor,
    cams: torch.Tensor,
    cls_label: torch.Tensor,
    high: float = 0.5,
    low: float = 0.3,
    down_scale: int = 2,
    ignore_index: int = IGNORE_INDEX,
    compact: bool = True,
) -> torch.Tensor:
    """Refined pseudo label (B, H, W) int64: 0 = background, c + 1 = class c, ``ignore_index`` = unsure.

    The reference's ``refine_cams_with_bkg_v2``: the image and the maps ``[bg ; cams]`` are
    bilinearly downsampled by ``down_scale``; for each image a softmax over the background and the
    present classes gives probabilities, which PAR refines; they are upsampled back to (H, W) and
    arg-maxed. This is done with a background score ``high`` and with ``low``: a pixel is foreground
    where the ``high`` labelling says so, background where both say background, ignored otherwise.

    Absent classes are masked with -inf before the softmax, so their probability is exactly 0 and
    stays 0 through PAR (which refines each channel independently with shared weights) and the
    upsampling; present channels stay > 0, so an absent class is never chosen and the result equals
    the reference's per-image channel selection. Both thresholds share one PAR affinity.

    Args:
        par: the refinement module.
        image01: images (B, 3, H, W) in [0, 1] (see :func:`denormalize`).
        cams: label-masked CAMs (B, K, H, W) in [0, 1] (see :func:`valid_cams`).
        cls_label: multi-hot image labels (B, K); a class is present where the label is non-zero.
        high, low: background scores, ``high > low``.
        down_scale: PAR runs at (H // down_scale, W // down_scale).
        ignore_index: label of the pixels between the two thresholds.
        compact: refine only as many channels as the image with most classes needs (1 + its class
            count) instead of all K + 1. Same result, much less work for many classes, at the cost
            of one device-to-host sync to read that count.
    """
    if not high > low:
        raise ValueError(f"high must be greater than low, got high={high} and low={low}")
    _check_inputs(image01, cams, cls_label, down_scale)
    b, k, h, w = cams.shape
    small = (h // down_scale, w // down_scale)
    # Refine in at least float32 even under autocast: argmax ties are decided by tiny differences.
    dtype = torch.promote_types(cams.dtype, torch.float32)
    cams = cams.to(dtype)
    images = F.interpolate(image01.to(dtype), size=small, mode="bilinear", align_corners=False)

    bg = cams.new_tensor([high, low]).view(1, 2, 1, 1).expand(b, 2, h, w)  # (B, 2, H, W)
    maps = F.interpolate(torch.cat([bg, cams], dim=1), size=small, mode="bilinear", align_corners=False)
    fg = maps[:, 2:]  # (B, K, h, w)
    logits = torch.stack(
        [torch.cat([maps[:, :1], fg], dim=1), torch.cat([maps[:, 1:2], fg], dim=1)], dim=1
    )  # (B, 2, K + 1, h, w): [high ; low] x [bg ; classes]

    present = torch.cat([cls_label.new_ones(b, 1, dtype=torch.bool), cls_label != 0], dim=1)  # (B, K + 1)
    ids = torch.arange(k + 1, device=cams.device).expand(b, k + 1)  # (B, K + 1)
    if compact:
        width = int(present.sum(dim=1).max())  # host sync: the number of channels to refine
        # Present ids first (ascending, like the reference's nonzero), then absent ones as padding.
        order = torch.where(present, ids, ids + k + 1).argsort(dim=1)[:, :width]  # (B, n)
        ids = ids.gather(1, order)
        present = present.gather(1, order)
        logits = logits.gather(2, ids[:, None, :, None, None].expand(-1, 2, -1, *small))
    n = ids.shape[1]

    logits = logits.masked_fill(~present[:, None, :, None, None], float("-inf"))
    probs = logits.softmax(dim=2).flatten(1, 2)  # (B, 2n, h, w)
    refined = par(images, probs)  # (B, 2n, h, w)
    refined = F.interpolate(refined, size=(h, w), mode="bilinear", align_corners=False)
    index = refined.view(b, 2, n, h, w).argmax(dim=2)  # (B, 2, H, W) into ids
    labels = ids.gather(1, index.flatten(1)).view(b, 2, h, w)  # (B, 2, H, W) class ids, 0 = bg
    label_h, label_l = labels.unbind(dim=1)
    unsure = torch.full_like(label_h, ignore_index)
    return torch.where(label_h > 0, label_h, torch.where(label_l > 0, unsure, 0))  # (B, H, W)


def refine_without_background(
    par: PAR,
    image01: torch.Tensor,
    cams: torch.Tensor,
    cls_label: torch.Tensor,
    down_scale: int = 2,
) -> torch.Tensor:
    """Refined pseudo label (B, H, W) int64 of data without a background class: c = class c, every pixel.

    :func:`refine_with_background` without the background channel: the image and the CAMs are
    bilinearly downsampled by ``down_scale``, soft-maxed over the image's present classes (absent ones
    masked with -inf, so their probability is exactly 0 and they are never chosen), refined by PAR,
    upsampled back to (H, W) and arg-maxed. No thresholds, no ignore band: every pixel gets a class.
    An image without any present class cannot be labelled (there is no background to give it): refused.

    Args:
        par: the refinement module.
        image01: images (B, 3, H, W) in [0, 1] (see :func:`denormalize`).
        cams: label-masked CAMs (B, K, H, W) in [0, 1] (see :func:`valid_cams`).
        cls_label: multi-hot image labels (B, K); every image needs at least one present class.
        down_scale: PAR runs at (H // down_scale, W // down_scale).
    """
    _check_inputs(image01, cams, cls_label, down_scale)
    present = cls_label != 0  # (B, K)
    if empty := torch.nonzero(~present.any(dim=1)).flatten().tolist():  # host sync, as the compact path above
        raise ValueError(
            f"image(s) {empty} of the batch have no class: without a background class such an image "
            "cannot be labelled; leave images without any class out of training (data.use_negatives=false)"
        )
    b, k, h, w = cams.shape
    small = (h // down_scale, w // down_scale)
    dtype = torch.promote_types(cams.dtype, torch.float32)  # argmax ties: refine in at least float32
    images = F.interpolate(image01.to(dtype), size=small, mode="bilinear", align_corners=False)
    maps = F.interpolate(cams.to(dtype), size=small, mode="bilinear", align_corners=False)  # (B, K, h, w)
    probs = maps.masked_fill(~present[:, :, None, None], float("-inf")).softmax(dim=1)  # (B, K, h, w)
    refined = par(images, probs)  # (B, K, h, w)
    refined = F.interpolate(refined, size=(h, w), mode="bilinear", align_corners=False)  # (B, K, H, W)
    return refined.argmax(dim=1)  # (B, H, W) class c = value c
