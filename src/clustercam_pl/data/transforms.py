"""Joint image + mask augmentation with albumentations 2.x.

Two training recipes, chosen by name (``train_transform`` in the data config):

``"reference"`` (default), the reference's timm 0.4.12 ``create_transform(is_training=True)`` rebuilt:
    RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3), bicubic) -> HorizontalFlip(0.5)
    -> RandAugment-like ops -> random erasing p=0.25 -> ImageNet Normalize -> tensor.
    albumentations has no RandAugment. timm's ``rand-m9-mstd0.5-inc1`` picks 2 of 15 ops with
    replacement and applies each with p=0.5 at magnitude ~9/10. Here it is an **approximation**:
    ``RandomOrder(n=2, replace=True)`` over the same op families, each with p=0.5, with ranges set to
    magnitude 9 (rotate +-27 deg, shear +-15 deg, translate +-40.5 %, brightness/contrast/saturation
    factor 1 +- 0.81, posterize 1-2 bits, solarize threshold ~26/255). Differences: the magnitude
    is drawn uniformly in the range instead of N(9, 0.5) with a random sign, sharpness uses
    ``A.Sharpen``, and timm's ``SolarizeAdd`` has no counterpart (left out). Random erasing mirrors
    timm's ``RandomErasing(p=0.25, mode='pixel', max_count=1)`` (area 2-33 %, aspect 0.3-3.3), filled
    with uniform random pixels before normalisation instead of N(0, 1) after it.

``"plain"``: RandomScale(0.5-2.0) -> pad to the crop size (image fill 0, mask fill 255) -> RandomCrop
    -> HorizontalFlip -> Normalize -> tensor. The usual segmentation recipe (ToCo/AFA style).

``"flip"``: the whole patch, flipped: (PadIfNeeded -> RandomCrop, the identity for a patch of the crop
    size) -> one of the four flips (none, horizontal, vertical, both) -> Normalize -> tensor. For
    histopathology patches, whose tag describes the whole patch (a crop could lose a tagged class) and
    which have no up or left: the stage-one recipe of ChuHan89/WSSS-Tissue (``1_train_stage1.py``:
    random horizontal and vertical flips).

``"none"``: Normalize -> tensor only (images must already share one size, e.g. the synthetic set).

Evaluation uses :func:`build_eval_transform` (normalise only; images keep their own size).

Normalisation: ImageNet's mean / std unless the dataset stores its own (``mean``, ``std``: one value
per channel, computed by ``prepare`` over the training split; N-channel remote-sensing data). Images
with other than 3 channels (RGB-IR, multispectral) take "plain", "flip" or "none": the colour operations of
"reference" (saturation, hue, equalise, solarise, ...) are defined for RGB only.

All transforms use the 2.x argument names (``size=``, ``fill=``, ``fill_mask=``): the 1.x names
(``value=``, ``mask_value=``) only warn and then pad the mask with 0 instead of the ignore value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch

from clustercam_pl.data.labels import IGNORE_INDEX

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

TRAIN_TRANSFORMS = ("reference", "plain", "flip", "none")

# timm's geometric ops fill with the ImageNet mean pixel (img_mean hparam); so do we.
_MEAN_PIXEL = tuple(round(255 * m) for m in IMAGENET_MEAN)


def _rand_augment_m9(ignore_index: int = IGNORE_INDEX) -> A.BaseCompose:
    """Approximation of timm ``rand-m9-mstd0.5-inc1``: 2 ops (with replacement), each with p=0.5."""
    geo = {"fill": _MEAN_PIXEL, "fill_mask": ignore_index, "border_mode": cv2.BORDER_CONSTANT}
    jitter = 0.81  # timm "increasing" enhance ops at m=9: factor 1 +- 0.9 * 0.9
    ops = [
        A.AutoContrast(p=0.5),
        A.Equalize(p=0.5),
        A.InvertImg(p=0.5),
        A.Affine(rotate=(-27, 27), p=0.5, **geo),
        A.Posterize(num_bits=(1, 2), p=0.5),
        A.Solarize(threshold_range=(0.08, 0.12), p=0.5),
        A.ColorJitter(brightness=0, contrast=0, saturation=(1 - jitter, 1 + jitter), hue=0, p=0.5),
        A.ColorJitter(brightness=0, contrast=(1 - jitter, 1 + jitter), saturation=0, hue=0, p=0.5),
        A.ColorJitter(brightness=(1 - jitter, 1 + jitter), contrast=0, saturation=0, hue=0, p=0.5),
        A.Sharpen(alpha=(0.5, 0.9), lightness=(1.0, 1.0), p=0.5),
        A.Affine(shear={"x": (-15, 15), "y": (0, 0)}, p=0.5, **geo),
        A.Affine(shear={"x": (0, 0), "y": (-15, 15)}, p=0.5, **geo),
        A.Affine(translate_percent={"x": (-0.405, 0.405), "y": (0, 0)}, p=0.5, **geo),
        A.Affine(translate_percent={"x": (0, 0), "y": (-0.405, 0.405)}, p=0.5, **geo),
    ]
    return A.RandomOrder(ops, n=2, replace=True, p=1.0)


def _normalize(mean: Sequence[float] | None, std: Sequence[float] | None) -> A.Normalize:
    """Per-channel normalisation of uint8 images: ImageNet's when ``mean`` / ``std`` are None."""
    if (mean is None) != (std is None):
        raise ValueError("give mean and std together (or neither: ImageNet's)")
    if mean is None or std is None:
        return A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return A.Normalize(mean=tuple(mean), std=tuple(std))


def build_train_transform(
    name: str = "reference", crop_size: int = 448, seed: int | None = None, ignore_index: int = IGNORE_INDEX,
    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
) -> A.Compose:
    """The training augmentation ``name`` ("reference" | "plain" | "flip" | "none") producing ``crop_size`` squares.

    Output of ``t(image=uint8 (H, W, N)[, mask=uint8 (H, W)])``: ``image`` float32 (N, S, S) normalised
    with ``mean`` / ``std`` (N values each; None: ImageNet's, N = 3), ``mask`` uint8 (S, S) with
    ``ignore_index`` where padding or erasing removed the content. "reference" needs N = 3.
    """
    size = (crop_size, crop_size)
    channels = 3 if mean is None else len(mean)
    if name == "reference" and channels != 3:
        raise ValueError(
            f"data.train_transform=reference has colour operations for RGB images only, and this dataset has "
            f"{channels} channels: pass data.train_transform=plain (scale, pad, crop, flip)"
        )
    tail = [_normalize(mean, std), A.ToTensorV2()]
    if name == "reference":
        ops: list[Any] = [
            A.RandomResizedCrop(
                size=size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation=cv2.INTER_CUBIC
            ),
            A.HorizontalFlip(p=0.5),
            _rand_augment_m9(ignore_index),
            A.Erasing(
                scale=(0.02, 1 / 3), ratio=(0.3, 1 / 0.3), fill="random", fill_mask=ignore_index, p=0.25
            ),
        ]
    elif name == "plain":
        ops = [
            A.RandomScale(scale_limit=(-0.5, 1.0), interpolation=cv2.INTER_LINEAR, p=1.0),
            A.PadIfNeeded(
                min_height=crop_size,
                min_width=crop_size,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=ignore_index,
            ),
            A.RandomCrop(height=crop_size, width=crop_size),
            A.HorizontalFlip(p=0.5),
        ]
    elif name == "flip":
        ops = [
            A.PadIfNeeded(min_height=crop_size, min_width=crop_size, border_mode=cv2.BORDER_CONSTANT, fill=0,
                          fill_mask=ignore_index),
            A.RandomCrop(height=crop_size, width=crop_size),
            # One draw of the four flips: albumentations 2.0.8 gives every op of a seeded Compose the same
            # seed, so HorizontalFlip(p=0.5) then VerticalFlip(p=0.5) would always agree (2 of 4 flips).
            A.OneOf([A.NoOp(), A.HorizontalFlip(p=1.0), A.VerticalFlip(p=1.0),
                     A.Sequential([A.HorizontalFlip(p=1.0), A.VerticalFlip(p=1.0)])], p=1.0),
        ]
    elif name == "none":
        ops = []
    else:
        raise ValueError(f"unknown train_transform {name!r}: expected one of {TRAIN_TRANSFORMS}")
    return A.Compose([*ops, *tail], seed=seed)


def build_eval_transform(mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> A.Compose:
    """Evaluation: normalisation only (``mean`` / ``std``, None: ImageNet's); the image keeps its own size."""
    return A.Compose([_normalize(mean, std), A.ToTensorV2()])


def apply_transform(
    transform: Callable[..., dict[str, Any]], image: np.ndarray, mask: np.ndarray | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run an albumentations pipeline; returns image float32 (N, H, W) and mask int64 (H, W) or None."""
    if mask is None:
        out = transform(image=image)
        return out["image"].float(), None
    out = transform(image=image, mask=mask)
    m = out["mask"]
    m = torch.as_tensor(m) if not isinstance(m, torch.Tensor) else m
    return out["image"].float(), m.long()  # (3, H, W), (H, W)


def seed_transform(transform: Any, seed: int) -> None:
    """Reseed an albumentations pipeline (per DataLoader worker / per rank).

    albumentations 2.0 keeps its own generator inside ``Compose``; a forked worker inherits a copy of
    it, so without reseeding every worker would draw the same augmentations.
    """
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(int(seed) % (2**32))
