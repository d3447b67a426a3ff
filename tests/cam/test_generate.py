"""clustercam_pl.cam.generate: single- and multi-scale ClusterCAMs and the pseudo-label step.

The reference parity of these functions is in tests/models/test_parity.py; here: the rules around them.
"""

from __future__ import annotations

import pytest
import torch

from clustercam_pl.cam.config import CAMConfig
from clustercam_pl.cam.generate import propagate_with_attention, pseudo_label_step, single_scale_cam
from clustercam_pl.cam.par import PAR
from helpers import tiny_net


@pytest.mark.parametrize(
    "train_mode, net_training, cam_training",
    [(True, True, True), (False, True, False), (True, False, False), (False, False, False)],
)
def test_pseudo_label_step_picks_the_cam_mode_and_restores_it(train_mode, net_training, cam_training):
    """CAMs run in train mode (drop-path on) only for a training network with `cam.train_mode`."""
    net = tiny_net(2, embed_dim=16, depth=1, pos_grid=2).train(net_training)
    seen = []
    net.backbone.register_forward_hook(lambda m, args, out: seen.append(m.training))
    cfg = CAMConfig(cam_layers=1, scales=(1.0,), flip=False, par_iters=1, par_dilations=(1,), train_mode=train_mode)
    cams, pseudo = pseudo_label_step(net, PAR(cfg.par_dilations, cfg.par_iters), cfg, torch.randn(1, 3, 32, 32),
                                      torch.tensor([[1.0, 0.0]]))
    assert seen == [cam_training] and net.training == net_training
    assert cams.shape == (1, 2, 32, 32) and pseudo.shape == (1, 32, 32)


@pytest.mark.parametrize("K", [3, 40])  # fewer and more classes than the head width 16
def test_fused_propagation_equals_explicit_attention(K):
    """The fast CAM path pads SDPA operands to one width; the product must not change."""
    B, nh, N, d = 2, 3, 24, 16
    qk = [(torch.randn(B, nh, K + N, d), torch.randn(B, nh, K + N, d)) for _ in range(2)]
    cam = torch.rand(B, K, N)
    p2p = sum(((q @ k.transpose(-2, -1)) * d**-0.5).softmax(-1)[:, :, K:, K:].mean(1) for q, k in qk)
    torch.testing.assert_close(propagate_with_attention(cam, qk, K), cam @ p2p.transpose(1, 2))


def test_cam_layers_beyond_the_depth_is_a_clear_error():
    net = tiny_net(3)  # depth 2
    with pytest.raises(ValueError, match=r"^cam\.cam_layers=3 must be in 1\.\.2, the network's depth \(net\.depth=2\)$"):
        single_scale_cam(net, torch.randn(1, 3, 64, 64), cam_layers=3)


def test_materialising_cam_equals_fused_cam():
    torch.manual_seed(4)
    fast = tiny_net(3, alpha_init=0.3)
    slow = tiny_net(3, alpha_init=0.3, fused_attention=False)
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(2, 3, 64, 80)
    for p2p in (True, False):
        a, b = (single_scale_cam(n.eval(), x, cam_layers=2, p2p_refine=p2p) for n in (fast, slow))
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
