"""Metrics: VOC mIoU against a hand confusion matrix, and the per-image mAP of the reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clustercam_pl.metrics import PerImageAveragePrecision, SegmentationIoU


def _hand_miou(gts, preds, n):
    conf = np.zeros((n, n))
    for gt, pr in zip(gts, preds, strict=True):
        gt, pr = gt.numpy().ravel(), pr.numpy().ravel()
        keep = (gt >= 0) & (gt < n)
        conf += np.bincount(n * gt[keep] + pr[keep], minlength=n * n).reshape(n, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.diag(conf) / (conf.sum(0) + conf.sum(1) - np.diag(conf))
    return iou, np.nanmean(iou)


def test_miou_equals_hand_confusion_matrix_with_absent_class():
    n = 5  # class 4 occurs in neither prediction nor ground truth
    torch.manual_seed(0)
    gts = [torch.randint(0, 4, (2, 7, 9)) for _ in range(3)]
    preds = [torch.randint(0, 4, (2, 7, 9)) for _ in range(3)]
    for gt in gts:
        gt[:, 0] = 255
    metric = SegmentationIoU(num_classes=n)
    for gt, pr in zip(gts, preds, strict=True):
        metric.update(pr, gt)
    out = metric.compute()
    iou, miou = _hand_miou(gts, preds, n)
    assert math.isnan(out["per_class"][4].item())
    np.testing.assert_allclose(out["per_class"][:4].numpy(), iou[:4], rtol=1e-6)
    assert out["miou"].item() == pytest.approx(miou, rel=1e-6)
    # the average="none" trap: a plain mean with absent classes as 0 would be lower
    assert out["miou"].item() > np.nan_to_num(iou).mean()


def test_miou_accepts_logits_and_class_only_in_prediction():
    gt = torch.tensor([[[0, 0, 1, 255]]])
    logits = torch.zeros(1, 3, 1, 4)
    logits[0, 0, 0, 0] = 1
    logits[0, 2, 0, 1] = 1  # class 2 predicted, never in gt -> IoU 0, counted
    logits[0, 1, 0, 2] = 1
    logits[0, 2, 0, 3] = 1  # ignored pixel
    metric = SegmentationIoU(num_classes=3)
    metric.update(logits, gt)
    out = metric.compute()
    torch.testing.assert_close(out["per_class"], torch.tensor([0.5, 1.0, 0.0]))
    assert out["miou"].item() == pytest.approx(0.5)


def test_per_image_ap_matches_definition_with_ties():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.5], [0.2, 0.3, 0.4, 0.1], [0.3, 0.2, 0.1, 0.0]])
    labels = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0], [0, 0, 1, 1]])
    metric = PerImageAveragePrecision()
    metric.update(scores, labels)
    # image 0: positives at 0.9 (P = 1/1) and 0.5 (tie with a negative: P = 2/3) -> (1 + 2/3) / 2
    # image 1: no positives, skipped; image 2: positives ranked 3rd and 4th -> (1/3 + 2/4) / 2
    want = ((1 + 2 / 3) / 2 + (1 / 3 + 2 / 4) / 2) / 2
    assert metric.compute().item() == pytest.approx(want, rel=1e-6)
