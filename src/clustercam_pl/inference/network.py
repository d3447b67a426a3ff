"""Prediction and scoring on evaluation batches: the one path in-training validation, eval, export and
predict share.

Evaluation batches hold images of their own sizes, padded to the largest (`image_size` (B, 2) says
each image's (H, W)). A padded image is never run padded: the network would see the padding and every
scale would resize it with the image. `size_groups` runs the whole batch at once when nothing is
padded, else each image at its own size, so any `val_batch_size` gives the numbers of batch size 1.

The segmentation prediction follows the reference's final evaluation (DCVL-WSSS/ClusterCAM
``infer_e2e.py``, method reference section 3.3): for each scale the full image is resized bilinearly
with ``align_corners=True`` to ``(int(H*s), int(W*s))``, the decoder's logits are upsampled back to
``(H, W)`` (``align_corners=False``), soft-maxed, and the probabilities of all scales (and flips, when
asked; the reference uses none) are fused by an element-wise maximum.

The scoring rules (also used by validation and the pseudo-label export): a pseudo label is scored with
its ignore band counted as background (every pixel is scored); a CAM is scored against a constant
background score. Without a background class (``net.cfg.background`` False) probabilities have K
channels (class c = channel c), a pseudo label has no ignore band and a CAM is scored by its argmax over
the image's classes. Plain arguments only: no Hydra here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from clustercam_pl.cam.config import CAMConfig
from clustercam_pl.cam.generate import pseudo_label_step
from clustercam_pl.cam.par import PAR
from clustercam_pl.data.labels import IGNORE_INDEX
from clustercam_pl.models import ClusterCAMNet
from clustercam_pl.models.utils import training_mode


# --------------------------------------------------------------------------------- batches
def size_groups(images: Tensor, image_size: Tensor | None) -> Iterator[tuple[list[int], int, int]]:
    """Index groups that can run as one batch: the whole batch when nothing is padded, else per image."""
    B, _, H, W = images.shape
    if image_size is None or bool((image_size[:, 0] == H).all() and (image_size[:, 1] == W).all()):
        yield list(range(B)), H, W
        return
    for i in range(B):
        yield [i], int(image_size[i, 0]), int(image_size[i, 1])


def crop_predictions(pred: Tensor, image_size: Tensor | None) -> list[Tensor]:
    """Label maps (B, H, W) of a padded batch -> one (h_i, w_i) map per image."""
    if image_size is None:
        return list(pred.unbind(0))
    return [pred[i, : int(image_size[i, 0]), : int(image_size[i, 1])] for i in range(pred.shape[0])]


# ------------------------------------------------------------------------------ segmentation
@dataclass
class Prediction:
    """Segmentation probabilities and image-level class scores of a batch."""

    probs: Tensor  # (B, C, H, W) max-fused softmax over the C = cfg.num_labels label values; 0 in the padding
    cls_logits: Tensor  # (B, K) class-token logits of the unflipped image at the scale nearest 1


@torch.no_grad()
def _predict_unpadded(net: ClusterCAMNet, x: Tensor, scales: Sequence[float], flip: bool) -> Prediction:
    """`Prediction` of images (B, 3, H, W) that all have their own size."""
    B, _, H, W = x.shape
    fused, cls_logits = None, None
    # Max fusion does not depend on the order of the scales; the class scores come from the first, so
    # the scale nearest 1 goes first: the scores of the image itself, not of its half-size copy.
    for s in sorted(scales, key=lambda s: abs(s - 1.0)):
        h, w = int(H * s), int(W * s)
        xs = x if (h, w) == (H, W) else F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True)
        if flip:
            xs = torch.cat([xs, xs.flip(-1)], dim=0)  # (2B, 3, h, w)
        out = net(xs)
        if cls_logits is None:
            cls_logits = out.cls_logits[:B].float()  # (B, K)
        logits = F.interpolate(out.seg_logits.float(), size=(H, W), mode="bilinear", align_corners=False)
        probs = logits.softmax(dim=1)  # (nB, C, H, W)
        if flip:
            probs = torch.maximum(probs[:B], probs[B:].flip(-1))  # (B, C, H, W)
        fused = probs if fused is None else torch.maximum(fused, probs)
    assert fused is not None and cls_logits is not None
    return Prediction(fused, cls_logits)


@torch.no_grad()
def predict(
    net: ClusterCAMNet,
    image: Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    image_size: Tensor | None = None,
) -> Prediction:
    """Segmentation probabilities and class scores of normalised images (B, N, H, W), eval mode.

    The reference protocol (module docstring); ``flip`` adds the mirrored image at every scale to the
    max-fusion. Images of a padded batch are predicted at their own size; the padding of the result
    is 0 (argmax: label value 0; masks are 255 there, so scores are unaffected).
    """
    if image.dim() != 4:
        raise ValueError(f"image must be (B, N, H, W), got {tuple(image.shape)}")
    if not scales or any(float(s) <= 0 for s in scales):
        raise ValueError(f"scales must be positive numbers, got {list(scales)}")
    B, _, H, W = image.shape
    K = net.cfg.num_classes
    probs = image.new_zeros(B, net.cfg.num_labels, H, W, dtype=torch.float32)  # (B, C, H, W)
    cls_logits = image.new_zeros(B, K, dtype=torch.float32)  # (B, K)
    with training_mode(net, False):
        for idx, h, w in size_groups(image, image_size):
            p = _predict_unpadded(net, image[idx, :, :h, :w], [float(s) for s in scales], flip)
            probs[idx, :, :h, :w] = p.probs
            cls_logits[idx] = p.cls_logits
    return Prediction(probs, cls_logits)


def window_starts(length: int, window: int, overlap: float) -> list[int]:
    """Offsets of the windows along one side: a step of ``window * (1 - overlap)`` (at least 1 pixel), the
    last window moved back to end at the edge; one window at 0 when the side is not longer than ``window``."""
    if length <= window:
        return [0]
    step = max(1, int(window * (1.0 - overlap)))
    starts = list(range(0, length - window + 1, step))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


@torch.no_grad()
def predict_windows(
    net: ClusterCAMNet,
    image: Tensor,
    window: int,
    overlap: float = 0.25,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> Prediction:
    """`predict` over a large image (B, N, H, W) by sliding windows: tiles larger than a window (an aerial
    6000 x 6000 tile) are predicted at full resolution, window by window, never resized as a whole.

    Windows of ``window`` pixels a side (the image's side where it is shorter) overlap by ``overlap`` of
    a window; each window is predicted with the protocol (`predict`: its scales and flips within the
    window) and the probabilities of the windows covering a pixel are averaged. The class scores are
    the maximum over the windows (a class is present in the image if it is in any window). An image
    that one window covers is predicted exactly as by `predict`.
    """
    if window < 1 or not 0.0 <= overlap < 1.0:
        raise ValueError(f"window must be >= 1 and overlap in [0, 1), got window={window}, overlap={overlap}")
    B, _, H, W = image.shape
    wh, ww = min(window, H), min(window, W)
    ys, xs = window_starts(H, wh, overlap), window_starts(W, ww, overlap)
    if len(ys) == 1 and len(xs) == 1:
        return predict(net, image, scales, flip)
    total = image.new_zeros(B, net.cfg.num_labels, H, W, dtype=torch.float32)  # (B, C, H, W) summed probabilities
    hits = image.new_zeros(1, 1, H, W, dtype=torch.float32)  # (1, 1, H, W) windows over each pixel
    cls_logits = image.new_full((B, net.cfg.num_classes), float("-inf"), dtype=torch.float32)  # (B, K)
    for y in ys:
        for x in xs:
            p = predict(net, image[:, :, y : y + wh, x : x + ww], scales, flip)
            total[:, :, y : y + wh, x : x + ww] += p.probs
            hits[:, :, y : y + wh, x : x + ww] += 1
            cls_logits = torch.maximum(cls_logits, p.cls_logits)
    return Prediction(total / hits, cls_logits)


# --------------------------------------------------------------------------- CAMs and labels
@torch.no_grad()
def pseudo_labels_per_image(
    net: ClusterCAMNet,
    par: PAR,
    image: Tensor,
    cls_label: Tensor,
    cam: CAMConfig,
    image_size: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Label-masked multi-scale CAMs (B, K, H, W) and PAR-refined pseudo labels (B, H, W) of a padded batch.

    `pseudo_label_step` per size group, with the network in eval mode (no drop-path: evaluation and
    export are deterministic, whatever ``cam.train_mode`` says for training). The CAM's min-max
    normalisation and PAR never see padding; the padding of the result is 0 for CAMs and
    ``IGNORE_INDEX`` for labels. The labels follow the network's convention (``net.cfg.background``).
    """
    B, _, H, W = image.shape
    K = net.cfg.num_classes
    cams_out = image.new_zeros(B, K, H, W, dtype=torch.float32)  # (B, K, H, W)
    labels_out = torch.full((B, H, W), IGNORE_INDEX, dtype=torch.long, device=image.device)  # (B, H, W)
    with training_mode(net, False):
        for idx, h, w in size_groups(image, image_size):
            x, lab = image[idx, :, :h, :w], cls_label[idx]  # (n, 3, h, w), (n, K)
            cams, pseudo = pseudo_label_step(net, par, cam, x, lab)  # (n, K, h, w), (n, h, w)
            cams_out[idx, :, :h, :w] = cams.float()
            labels_out[idx, :h, :w] = pseudo
    return cams_out, labels_out


# ------------------------------------------------------------------------------------ scoring
def scored_pseudo_label(pseudo: Tensor, ignore_index: int) -> Tensor:
    """The pseudo label as scored: its ignore band counts as background (conservative: every pixel).

    A label without a background class has no ignore band (only the padding, unscored: 255 in the mask)."""
    return torch.where(pseudo == ignore_index, 0, pseudo)


def cam_prediction(cams: Tensor, background: float | None, cls_label: Tensor | None = None) -> Tensor:
    """Label map (..., H, W) of CAMs (..., K, H, W) against a constant background score.

    ``background=None`` (data without a background class): the argmax over the classes, class c = value c;
    with ``cls_label`` (..., K) the absent classes are never chosen (label-masked CAMs are 0 there and
    could tie with a present class's 0).
    """
    if background is None:
        if cls_label is not None:
            absent = (cls_label == 0)[..., None, None]  # (..., K, 1, 1)
            cams = cams.masked_fill(absent, float("-inf"))
        return cams.argmax(-3)
    bg = torch.full_like(cams.narrow(-3, 0, 1), background)  # (..., 1, H, W)
    return torch.cat([bg, cams], dim=-3).argmax(-3)


# TODO(merge): `ClusterViT.min_input_side` (models/vit.py) is the one home of this rule once merged.
def min_input_side(net: ClusterCAMNet) -> int:
    """The smallest input side the network takes (`ClusterViT.min_input_side`; an `SmpSegNet` says its own)."""
    own = getattr(net, "min_input_side", None)
    return int(own) if own is not None else net.backbone.min_input_side
