"""Losses: parity with the reference fixture and the balanced seg loss edge cases."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clustercam_pl.losses import ClusterCAMLoss, LossConfig, clustercam_losses, seg_loss
from helpers import rel_err


def test_losses_match_reference_fixture(expected):
    losses = clustercam_losses(
        expected["s0_cls_logits"],
        expected["s0_patch_logits"],
        expected["s0_seg_logits"],
        expected["cls_label"],
        expected["pseudo_label"],
    )
    assert set(losses) == {"cls", "patch", "seg", "total"}
    for key in ("cls", "patch", "seg"):
        assert rel_err(losses[key], expected[f"loss_{key}"]) < 1e-4, key
    want = expected["loss_cls"] + expected["loss_patch"] + 0.1 * expected["loss_seg"]
    assert rel_err(losses["total"], want) < 1e-4


def test_without_pseudo_label_there_is_no_seg_term():
    cls_logits, patch_logits = torch.randn(2, 3), torch.randn(2, 3)
    label = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    losses = ClusterCAMLoss(LossConfig(w_cls=2.0, w_patch=0.5))(cls_logits, patch_logits, None, label)
    assert set(losses) == {"cls", "patch", "total"}
    torch.testing.assert_close(losses["total"], 2.0 * losses["cls"] + 0.5 * losses["patch"])
    with pytest.raises(ValueError, match="seg_logits is None"):
        clustercam_losses(cls_logits, patch_logits, None, label, torch.zeros(2, 8, 8, dtype=torch.long))


def _balanced_by_hand(logits, label):
    bg = label == 0
    fg = (label != 0) & (label != 255)
    ce = F.cross_entropy(logits, label.clamp(max=logits.shape[1] - 1), reduction="none")
    return 0.5 * (ce[bg].mean() + ce[fg].mean())


def test_seg_loss_balanced_and_ignore():
    logits = torch.randn(2, 4, 6, 6)
    label = torch.randint(0, 4, (2, 6, 6))
    label[:, :2] = 255
    torch.testing.assert_close(seg_loss(logits, label), _balanced_by_hand(logits, label))


def test_seg_loss_without_foreground_is_half_the_background_ce():
    logits = torch.randn(1, 3, 5, 5, requires_grad=True)
    label = torch.zeros(1, 5, 5, dtype=torch.long)
    label[0, 0] = 255
    loss = seg_loss(logits, label)
    assert torch.isfinite(loss)
    bg_ce = F.cross_entropy(logits, label, ignore_index=255)
    torch.testing.assert_close(loss, 0.5 * bg_ce)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    # nothing but ignore: 0, with a finite gradient
    logits.grad = None
    empty = seg_loss(logits, torch.full((1, 5, 5), 255))
    assert empty.item() == 0.0
    empty.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_seg_logits_are_upsampled_bilinearly():
    seg = torch.randn(2, 4, 3, 3)
    pseudo = torch.randint(0, 4, (2, 12, 12))
    got = clustercam_losses(torch.randn(2, 3), torch.randn(2, 3), seg, torch.ones(2, 3), pseudo)["seg"]
    up = F.interpolate(seg, size=(12, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(got, seg_loss(up, pseudo))
