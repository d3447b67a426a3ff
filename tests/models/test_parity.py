"""Acceptance: the network reproduces the reference implementation on its parity fixture.

The fixture (shared/fixtures/official_parity) holds a reference-format checkpoint and the reference's
float64 outputs on it; a match is a relative error below 1e-4 on every tensor.
"""

from __future__ import annotations

import pytest
import torch

from clustercam_pl.cam.generate import multi_scale_cam, single_scale_cam
from clustercam_pl.checkpoint import load_checkpoint
from helpers import rel_err

TOL = 1e-4


@pytest.fixture(scope="module", params=[True, False], ids=["fused", "materialize"])
def net(request, parity_dir):
    return load_checkpoint(parity_dir / "official_checkpoint.pth", fused_attention=request.param).net


def test_checkpoint_architecture_is_inferred(net, expected):
    bb = net.backbone
    assert (bb.cfg.embed_dim, bb.cfg.depth, bb.cfg.num_heads, net.cfg.num_classes) == (48, 12, 6, 3)
    assert net.cfg.feature_channels == 48 + 12 * 6 * 3
    assert all(b.cluster for b in bb.blocks)


@pytest.mark.parametrize("s", ["s0", "s1"])
def test_forward_matches_reference(net, expected, s):
    x = expected[f"{s}_image"]
    with torch.no_grad():
        out = net.forward_intermediates(x)
    assert rel_err(out.cls_logits, expected[f"{s}_cls_logits"]) < TOL
    assert rel_err(out.patch_logits, expected[f"{s}_patch_logits"]) < TOL
    assert rel_err(out.seg_logits, expected[f"{s}_seg_logits"]) < TOL
    for b in (0, 11):
        rec = out.attention[b]
        assert rel_err(rec.tokens, expected[f"{s}_block{b}_tokens"]) < TOL
        assert rel_err(rec.p2p, expected[f"{s}_block{b}_p2p"]) < TOL
        assert rel_err(rec.c2p_mixed, expected[f"{s}_block{b}_c2p_mixed"]) < TOL


@pytest.mark.parametrize("s", ["s0", "s1"])
def test_single_scale_cam_matches_reference(net, expected, s):
    x = expected[f"{s}_image"]
    assert rel_err(single_scale_cam(net, x), expected[f"{s}_cam"]) < TOL
    assert rel_err(single_scale_cam(net, x, p2p_refine=False), expected[f"{s}_cam_no_p2p"]) < TOL


def test_multi_scale_cam_matches_reference(net, expected):
    cam = multi_scale_cam(net, expected["s0_image"], scales=(1.0, 0.75, 1.25))
    assert cam.shape == expected["ms_cam"].shape
    assert rel_err(cam, expected["ms_cam"]) < TOL
    valid = cam * expected["cls_label"][:, :, None, None]
    assert rel_err(valid, expected["ms_cam_valid"]) < TOL
