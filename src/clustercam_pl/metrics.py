"""Evaluation metrics: VOC-convention segmentation mIoU and multi-label classification mAP.

* :class:`SegmentationIoU`: the confusion matrix over all pixels of the whole set (target
  ``ignore_index`` excluded), IoU per class, and the mean over the classes that occur in the
  prediction or the ground truth (a class absent from both has IoU NaN and is skipped). This is the
  reference's ``seg/tool/metrics.Evaluator`` (DCVL-WSSS/ClusterCAM), used for the reported numbers.
* :class:`PerImageAveragePrecision`: the reference's in-training mAP (``engine.compute_mAP``): the
  average precision of each image's class scores against its labels, averaged over the images with
  at least one positive label.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.classification import MulticlassJaccardIndex

from clustercam_pl.data.labels import IGNORE_INDEX


class SegmentationIoU(MulticlassJaccardIndex):
    """Dataset-level IoU per class and its NaN-aware mean; ``compute()`` returns ``{"miou", "per_class"}``.

    ``update(preds, target)`` takes label maps (B, H, W) or logits/probabilities (B, C, H, W) and
    targets (B, H, W). The state is the summed confusion matrix (synced across processes by
    torchmetrics). IoU is computed in float64 from the integer counts.

    Beware the ``average="none"`` mean trap: with torchmetrics' default ``zero_division=0`` a class
    absent from both prediction and ground truth scores 0 and drags a plain ``.mean()`` down; here it
    is NaN and skipped by the mean, as in the reference's ``np.nanmean``.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, validate_args: bool = True, **kwargs: Any):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        super().__init__(
            num_classes=num_classes,
            average="none",
            ignore_index=ignore_index,
            validate_args=validate_args,
            zero_division=float("nan"),
            **kwargs,
        )

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        miou, per_class = iou_from_confmat(self.confmat)
        return {"miou": miou.float(), "per_class": per_class.float()}


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_pred: int | None = None
) -> torch.Tensor:
    """int64 (C, C) counts, rows = target, columns = prediction, over pixels with 0 <= target < C
    (and pred != ignore_pred when given): the reference's `Evaluator` convention."""
    valid = (target >= 0) & (target < num_classes)  # (H, W)
    if ignore_pred is not None:
        valid &= pred != ignore_pred
    idx = target[valid] * num_classes + pred[valid]
    counts = torch.bincount(idx, minlength=num_classes * num_classes)  # (C * C,)
    return counts.view(num_classes, num_classes)


def iou_from_confmat(confmat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VOC-convention mIoU and per-class IoU (float64) of a (C, C) confusion matrix (rows: ground truth).

    A class absent from both prediction and ground truth has IoU NaN and is left out of the mean.
    """
    cm = torch.as_tensor(confmat).double()
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    per_class = torch.where(union > 0, tp / union.clamp_min(1), float("nan"))  # (C,)
    return per_class.nanmean(), per_class


class PerImageAveragePrecision(Metric):
    """Mean over images of the average precision of each image's K scores (the reference's mAP).

    For one image with positives P: ``AP = mean_{j in P} |{i in P: s_i >= s_j}| / |{i: s_i >= s_j}|``,
    which equals sklearn's ``average_precision_score(labels, scores)`` including ties. Images
    without positive labels are skipped, as in the reference. Vectorised, no host sync in ``update``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("ap_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        """``scores`` (B, K) (logits or probabilities: only the order matters), ``labels`` (B, K) 0/1."""
        if scores.shape != labels.shape or scores.dim() != 2:
            raise ValueError(
                f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} must both be (B, K)"
            )
        pos = (labels > 0).double()  # (B, K)
        s = scores.double()
        above = (s.unsqueeze(1) >= s.unsqueeze(2)).double()  # (B, K, K): [b, j, i] = s_i >= s_j
        precision = (above * pos.unsqueeze(1)).sum(-1) / above.sum(-1)  # (B, K) at each score's threshold
        n_pos = pos.sum(-1)  # (B,)
        ap = (precision * pos).sum(-1) / n_pos.clamp_min(1)  # (B,)
        has_pos = n_pos > 0
        self.ap_sum += torch.where(has_pos, ap, 0.0).sum()
        self.count += has_pos.sum()

    def compute(self) -> torch.Tensor:
        return (self.ap_sum / self.count).float()  # NaN if no image had a positive label


def scores_from_confmat(confmat: torch.Tensor, background: bool = True) -> dict[str, torch.Tensor]:
    """Per-class scores (float64, (C,)) of a (C, C) confusion matrix (rows: ground truth, label value 0 =
    background when ``background``; without a background class every error is "other class").

    With T = ground-truth pixels, P = predicted pixels, TP = their overlap, U = T + P - TP:
    ``iou`` TP/U, ``precision`` TP/P, ``recall`` TP/T, and the reference's false-positive and
    false-negative ratios ``fp`` (P-TP)/U and ``fn`` (T-TP)/U (so iou + fp + fn = 1). The errors are
    split by what the other side is: ``fp_bg`` / ``fp_other`` (predicted c where the truth is background
    / another class) and ``fn_bg`` / ``fn_other`` (true c predicted background / another class), each
    over U. A ratio with a zero denominator is NaN (a class absent from both sides has no score).
    """
    cm = torch.as_tensor(confmat).double()
    tp = cm.diagonal()
    t, p = cm.sum(1), cm.sum(0)
    union = t + p - tp

    def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        return torch.where(den > 0, num / den.clamp_min(1), float("nan"))

    fp_bg = cm[0].clone() if background else torch.zeros_like(tp)  # (C,) predicted c on true background
    fn_bg = cm[:, 0].clone() if background else torch.zeros_like(tp)  # (C,) true c predicted background
    fp_bg[0] = fn_bg[0] = 0  # background's own errors are all "other class"
    return {
        "iou": ratio(tp, union),
        "precision": ratio(tp, p),
        "recall": ratio(tp, t),
        "fp": ratio(p - tp, union),
        "fn": ratio(t - tp, union),
        "fp_bg": ratio(fp_bg, union),
        "fp_other": ratio(p - tp - fp_bg, union),
        "fn_bg": ratio(fn_bg, union),
        "fn_other": ratio(t - tp - fn_bg, union),
    }
