"""The network beyond the fixture: sizes, class counts, gradients, fast path == reference path."""

from __future__ import annotations

import pytest
import torch

from clustercam_pl.cam.generate import single_scale_cam
from clustercam_pl.models import ClusterCAMNet
from helpers import tiny_net


def tiny(num_classes=3, **kw) -> ClusterCAMNet:
    return tiny_net(num_classes, **kw)


def cam(net: ClusterCAMNet, x: torch.Tensor) -> torch.Tensor:
    return single_scale_cam(net, x, cam_layers=2)


@pytest.mark.parametrize("size", [(64, 64), (80, 48), (70, 99), (33, 65)])
def test_shapes_for_odd_and_non_square_inputs(size):
    H, W = size
    net = tiny().eval()
    h, w = H // 16, W // 16
    out = net(torch.randn(2, 3, H, W))
    assert out.cls_logits.shape == (2, 3) and out.patch_logits.shape == (2, 3)
    assert out.seg_logits.shape == (2, 4, h, w)
    assert out.features.shape == (2, 32 + 2 * 2 * 3, h, w)
    assert cam(net, torch.randn(1, 3, H, W)).shape == (1, 3, h, w)


@pytest.mark.parametrize("K", [1, 80])
def test_class_counts(K):
    net = tiny(num_classes=K).eval()
    out = net(torch.randn(1, 3, 64, 64))
    assert out.cls_logits.shape == (1, K) and out.seg_logits.shape == (1, K + 1, 4, 4)
    assert cam(net, torch.randn(1, 3, 64, 64)).shape == (1, K, 4, 4)
    assert torch.isfinite(out.seg_logits).all()


def test_feature_width_follows_depth_and_heads():
    net = tiny(num_classes=5, embed_dim=48, depth=3, num_heads=4)
    assert net.cfg.feature_channels == 48 + 3 * 4 * 5
    assert net(torch.randn(1, 3, 64, 64)).features.shape[1] == net.cfg.feature_channels


def test_every_parameter_gets_a_gradient():
    net = tiny(alpha_init=0.5)
    out = net(torch.randn(2, 3, 64, 64))
    (out.cls_logits.sum() + out.patch_logits.sum() + out.seg_logits.sum()).backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not dead, f"parameters without gradient: {dead}"
    # The reference's unused final LayerNorm is not built at all.
    assert not any(n.startswith(("norm.", "backbone.norm.")) for n, _ in net.named_parameters())


@pytest.mark.parametrize("cluster_blocks", [None, [1], []])
def test_fused_path_equals_materialising_path(cluster_blocks):
    torch.manual_seed(1)
    fast = tiny(cluster_blocks=cluster_blocks, alpha_init=0.3)
    slow = tiny(cluster_blocks=cluster_blocks, alpha_init=0.3, fused_attention=False)
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(2, 3, 64, 80)
    outs = []
    for net in (fast, slow):
        out = net(x)
        loss = out.cls_logits.square().sum() + out.patch_logits.square().sum() + out.seg_logits.square().mean()
        loss.backward()
        outs.append((out, {n: p.grad.clone() for n, p in net.named_parameters()}, cam(net, x)))
    (of, gf, cf), (os_, gs, cs) = outs
    for a, b in [(of.cls_logits, os_.cls_logits), (of.seg_logits, os_.seg_logits), (cf, cs)]:
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for n in gf:
        torch.testing.assert_close(gf[n], gs[n], rtol=1e-3, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")


def test_recorded_attention_is_consistent():
    net = tiny(alpha_init=0.25).eval()
    out = net.forward_intermediates(torch.randn(1, 3, 64, 64))
    rec = out.attention[0]
    N = 16
    assert rec.p2p.shape == (1, 2, N, N) and rec.assign.shape == (1, N, 4) and rec.cluster_grid == (2, 2)
    torch.testing.assert_close(rec.assign.sum(-1), torch.ones(1, N))  # each patch: distribution over clusters
    torch.testing.assert_close(rec.c2p_mixed, 0.75 * rec.c2p + 0.25 * rec.c2clu_mapped)


def test_drop_path_makes_train_mode_stochastic_and_eval_deterministic():
    net = tiny(drop_path_rate=0.5)
    x = torch.randn(2, 3, 64, 64)
    net.train()
    assert not torch.equal(cam(net, x), cam(net, x))
    net.eval()
    assert torch.equal(cam(net, x), cam(net, x))


def test_input_smaller_than_a_cluster_cell_is_a_clear_error():
    net = tiny()
    with pytest.raises(ValueError, match=r"input of 16x64 pixels gives a 1x4 patch grid, smaller than one cluster cell"):
        net(torch.randn(1, 3, 16, 64))
    # The one home of the smallest input: one cluster cell of patches, one patch without cluster blocks.
    side = net.backbone.min_input_side
    assert side == net.cfg.patch_size * max(net.cfg.cluster_grid)
    assert net(torch.randn(1, 3, side, side)).cls_logits.shape == (1, 3)
    with pytest.raises(ValueError, match="smaller than one cluster cell"):
        net(torch.randn(1, 3, side - 1, side))
    assert tiny(cluster_blocks=[]).backbone.min_input_side == net.cfg.patch_size


def test_constructor_validation():
    with pytest.raises(ValueError, match=r"net\.cluster_blocks \[5\] outside 0\.\.1 \(net\.depth=2\)"):
        tiny(cluster_blocks=[5])
    with pytest.raises(ValueError, match=r"net\.cluster_iters must be a positive integer, got 0"):
        tiny(cluster_iters=0)
    with pytest.raises(ValueError, match=r"\['cam_layers'\] are CAM settings now: pass them to CAMConfig \(config key cam\.cam_layers\)"):
        tiny(cam_layers=2)


def test_alphas_are_the_cluster_blocks_mixing_weights():
    net = tiny(cluster_blocks=[1], alpha_init=0.25)
    assert net.alphas().tolist() == [0.25]
    assert tiny(cluster_blocks=[]).alphas().numel() == 0


def test_no_cuda_calls_in_package():
    from pathlib import Path

    import clustercam_pl

    root = Path(clustercam_pl.__file__).parent
    offenders = [str(p) for p in root.rglob("*.py") if ".cuda(" in p.read_text()]
    assert not offenders, offenders


def _train_outputs(net: ClusterCAMNet, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Forward outputs, the CAM, and every parameter's gradient of one summed loss."""
    net.zero_grad(set_to_none=True)
    out = net(x)
    (out.cls_logits.sum() + out.patch_logits.sum() + out.seg_logits.square().mean()).backward()
    grads = [p.grad.clone() for p in net.parameters()]
    return [out.cls_logits, out.patch_logits, out.seg_logits, single_scale_cam(net, x, cam_layers=1)], grads


@pytest.mark.slow  # torch.compile (inductor) on CPU
def test_compile_parts_keeps_state_dict_keys_and_results():
    """Dynamo's graph capture (the `eager` backend: no code generation) computes what eager does."""
    torch.manual_seed(2)
    ref = tiny(alpha_init=0.4)
    net = tiny(alpha_init=0.4)
    net.load_state_dict(ref.state_dict())
    net.compile_parts(backend="eager")
    assert net.compiled and list(net.state_dict()) == list(ref.state_dict())  # no `_orig_mod.` prefix
    x = torch.randn(2, 3, 64, 48)
    (outs, grads), (ref_outs, ref_grads) = _train_outputs(net, x), _train_outputs(ref, x)
    for a, b in zip(outs + grads, ref_outs + ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.slow
def test_inductor_compiled_network_matches_eager():
    """The real `torch.compile` (inductor, C++ kernels on CPU): outputs and gradients within fp32 tolerance."""
    torch.manual_seed(3)
    ref = tiny(num_classes=2, embed_dim=16, depth=1, pos_grid=2, alpha_init=0.4)
    net = ClusterCAMNet(ref.cfg)
    net.load_state_dict(ref.state_dict())
    net.compile_parts(dynamic=False)
    x = torch.randn(2, 3, 32, 32)
    (outs, grads), (ref_outs, ref_grads) = _train_outputs(net, x), _train_outputs(ref, x)
    for a, b in zip(outs + grads, ref_outs + ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
