"""Pseudo labels: denormalisation and refine_with_background against the reference fixture and by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clustercam_pl.cam.par import PAR
from clustercam_pl.cam.refine import denormalize, refine_with_background, valid_cams


def test_denormalize_reproduces_reference_including_uint8_wrap(expected):
    out = denormalize(expected["s0_image"])
    assert out.dtype == torch.float32
    assert torch.equal(out, expected["denorm_image"])
    # the fixture image does leave [0, 255] after denormalisation: the wrap is exercised
    assert not torch.equal(denormalize(expected["s0_image"], wrap_uint8=False), out)


def test_denormalize_wrap_versus_clamp():
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    # raw values (x * 63.75 + 127.5): -2.0 -> -0.0 (trunc 0), -2.1 -> -6.375, 2.1 -> 261.375, 0 -> 127.5
    x = torch.tensor([0.0, -2.1, 2.1, -2.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    wrapped = denormalize(x, mean, std) * 255
    clamped = denormalize(x, mean, std, wrap_uint8=False) * 255
    torch.testing.assert_close(wrapped[0, 0, 0], torch.tensor([127.0, 250.0, 5.0, 0.0]))
    torch.testing.assert_close(clamped[0, 0, 0], torch.tensor([127.0, 0.0, 255.0, 0.0]))
    # and equal to torch's own CPU float -> uint8 cast
    raw = x * 63.75 + 127.5
    torch.testing.assert_close(wrapped, raw.type(torch.uint8).float())
    with pytest.raises(ValueError, match="4 channels"):
        denormalize(torch.zeros(1, 4, 2, 2))


def test_refine_matches_reference_fixture(expected):
    for compact in (True, False):
        label = refine_with_background(
            PAR(),
            expected["denorm_image"],
            expected["ms_cam_valid"],
            expected["cls_label"],
            0.5,
            0.3,
            compact=compact,
        )
        assert label.dtype == torch.int64 and label.shape == expected["pseudo_label"].shape
        agreement = (label == expected["pseudo_label"]).double().mean().item()
        assert agreement >= 0.999, f"compact={compact}: {agreement:.5f}"


def _per_image_selection(par, image01, cams, cls_label, high, low, down_scale=2, ignore_index=255):
    """The reference's algorithm spelt per image with channel selection (no -inf masking)."""
    b, _, h, w = cams.shape
    small = (h // down_scale, w // down_scale)
    images = F.interpolate(image01, size=small, mode="bilinear", align_corners=False)
    out = []
    for i in range(b):
        keys = torch.cat([torch.zeros(1, dtype=torch.long), torch.nonzero(cls_label[i])[:, 0] + 1])
        labels = []
        for bg in (high, low):
            maps = torch.cat([torch.full((1, 1, h, w), bg), cams[i : i + 1]], dim=1)
            maps = F.interpolate(maps, size=small, mode="bilinear", align_corners=False)
            probs = maps[:, keys].softmax(1)
            ref = F.interpolate(
                par(images[i : i + 1], probs), size=(h, w), mode="bilinear", align_corners=False
            )
            labels.append(keys[ref.argmax(1)[0]])
        lh, ll = labels
        lab = lh.clone()
        lab[lh == 0] = ignore_index
        lab[(lh + ll) == 0] = 0
        out.append(lab)
    return torch.stack(out)


def test_masking_equals_channel_selection_on_random_maps():
    torch.manual_seed(1)
    b, k, h, w = 3, 5, 24, 20
    cls_label = torch.tensor([[1, 0, 0, 1, 0], [0, 0, 0, 0, 0], [0, 1, 1, 1, 1]], dtype=torch.float32)
    cams = valid_cams(F.interpolate(torch.rand(b, k, 6, 5), size=(h, w), mode="bilinear"), cls_label)
    image = torch.rand(b, 3, h, w)
    par = PAR(dilations=(1, 2, 4), num_iter=4)
    want = _per_image_selection(par, image, cams, cls_label, 0.45, 0.25)
    for compact in (True, False):
        got = refine_with_background(par, image, cams, cls_label, 0.45, 0.25, compact=compact)
        assert torch.equal(got, want)
    assert (want[1] == 0).all()  # no class: all background


def test_hand_built_cams_give_expected_labels():
    h = w = 16
    cams = torch.zeros(1, 3, h, w)
    cams[0, 0, :, :8] = 1.0  # class 0 confident on the left half
    cams[0, 2, :, 8:] = 0.4  # class 2 between the thresholds on the right half
    cams[0, 1] = 1.0  # class 1 confident everywhere but absent from the label
    cls_label = torch.tensor([[1.0, 0.0, 1.0]])
    # PAR that changes nothing: isolate the thresholding logic
    label = refine_with_background(
        PAR(num_iter=0), torch.rand(1, 3, h, w), valid_cams(cams, cls_label), cls_label, high=0.5, low=0.3
    )
    # left: class 0 (id 1) clearly; right: fg under low (0.4 > 0.3) but bg under high (0.5 > 0.4) -> ignore
    assert (label[0, 2:-2, 1:6] == 1).all()
    assert (label[0, 2:-2, 10:15] == 255).all()
    assert not (label == 2).any()  # absent class never assigned even if its CAM was not zeroed first
    # a pixel with all CAMs 0 is background under both thresholds
    label0 = refine_with_background(PAR(num_iter=0), torch.rand(1, 3, h, w), torch.zeros(1, 3, h, w), cls_label)
    assert (label0 == 0).all()


def test_absent_classes_never_assigned_with_par():
    torch.manual_seed(3)
    cams = torch.rand(4, 6, 32, 32)  # NOT label-masked on purpose
    cls_label = (torch.rand(4, 6) > 0.6).float()
    label = refine_with_background(PAR(), torch.rand(4, 3, 32, 32), cams, cls_label)
    for i in range(4):
        allowed = {0, 255} | {int(c) + 1 for c in torch.nonzero(cls_label[i])[:, 0]}
        assert set(label[i].unique().tolist()) <= allowed


def test_validation_errors():
    cams, lab, img = torch.rand(2, 3, 8, 8), torch.ones(2, 3), torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"high=0.3 and low=0.5"):
        refine_with_background(PAR(), img, cams, lab, high=0.3, low=0.5)
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        refine_with_background(PAR(), img, cams, torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"\(2, 3, 6, 8\)"):
        refine_with_background(PAR(), torch.rand(2, 3, 6, 8), cams, lab)
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        valid_cams(cams, torch.ones(2, 4))
