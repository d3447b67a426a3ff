"""PAR: parity with the reference fixture and basic properties."""

from __future__ import annotations

import pytest
import torch

from clustercam_pl.cam.par import PAR
from helpers import rel_err


def test_par_matches_reference_fixture(expected):
    out = PAR()(expected["par_image"], expected["par_mask_in"])
    assert out.shape == expected["par_mask_out"].shape
    assert rel_err(out, expected["par_mask_out"]) < 1e-4


def test_par_defaults_and_buffers():
    par = PAR()
    assert par.dilations == (1, 2, 4, 8, 12, 24)
    assert par.num_iter == 10 and par.w1 == 0.3 and par.w2 == 0.01 and par.eps == 1e-5
    assert par.num_neighbours == 48
    assert "pos_weight" in dict(par.named_buffers())
    assert par.state_dict() == {}  # non-persistent: nothing to load from checkpoints
    # the positional softmax is scaled by w2
    assert par.pos_weight.sum().item() == pytest.approx(0.01, rel=1e-5)
    par.double()
    assert par.pos_weight.dtype == torch.float64


def _neighbour_sum_reference(images: torch.Tensor, masks: torch.Tensor, par: PAR) -> torch.Tensor:
    """Independent, slow spelling of PAR with explicit clamped indices (for small inputs)."""
    b, _, h, w = images.shape
    ys = torch.arange(h)
    xs = torch.arange(w)
    nbs = []
    for dy, dx in par.offsets:
        yi = (ys + dy).clamp(0, h - 1)
        xi = (xs + dx).clamp(0, w - 1)
        nbs.append((yi, xi))

    def gather(x):
        return torch.stack([x[..., yi, :][..., :, xi] for yi, xi in nbs], dim=2)  # (B, C, N, H, W)

    nb = gather(images)
    std = nb.std(dim=2, keepdim=True)
    aff = -(((nb - images.unsqueeze(2)).abs() / (std + par.eps) / par.w1) ** 2)
    aff = aff.mean(1).softmax(1) + par.pos_weight.double().view(1, -1, 1, 1)
    for _ in range(par.num_iter):
        masks = (gather(masks) * aff.unsqueeze(1)).sum(2)
    return masks


def test_par_equals_explicit_neighbour_gather():
    par = PAR(dilations=(1, 3), num_iter=3).double()
    images = torch.rand(2, 3, 9, 7, dtype=torch.float64)
    masks = torch.rand(2, 5, 9, 7, dtype=torch.float64)
    torch.testing.assert_close(par(images, masks), _neighbour_sum_reference(images, masks, par))


def test_constant_map_scales_by_one_plus_w2_per_step():
    images = torch.rand(1, 3, 20, 24)
    const = torch.full((1, 2, 20, 24), 0.7)
    out = PAR()(images, const)
    torch.testing.assert_close(out, const * 1.01**10, rtol=1e-5, atol=0)
    # without the positional term the weights are a convex combination: constants are preserved
    torch.testing.assert_close(PAR(w2=0.0)(images, const), const, rtol=1e-5, atol=0)


def test_convex_combination_bounds_and_channel_sum():
    images = torch.rand(2, 3, 16, 16)
    probs = torch.rand(2, 4, 16, 16).softmax(1)
    out = PAR(w2=0.0)(images, probs)
    # each channel stays within its input range, and channel sums (= 1) are preserved
    assert (out >= probs.amin(dim=(2, 3), keepdim=True) - 1e-6).all()
    assert (out <= probs.amax(dim=(2, 3), keepdim=True) + 1e-6).all()
    torch.testing.assert_close(out.sum(1), torch.ones(2, 16, 16), rtol=1e-5, atol=1e-5)


def test_affinity_sums_to_one_plus_w2():
    aff = PAR().affinity(torch.rand(2, 3, 12, 10))
    assert aff.shape == (2, 48, 12, 10)
    torch.testing.assert_close(aff.sum(1), torch.full((2, 12, 10), 1.01), rtol=1e-5, atol=1e-6)


def test_channels_and_batch_are_independent():
    par = PAR(num_iter=3)
    images = torch.rand(2, 3, 14, 14)
    masks = torch.rand(2, 3, 14, 14)
    full = par(images, masks)
    torch.testing.assert_close(par(images[1:], masks[1:, 2:]), full[1:, 2:])


def test_masks_are_resized_to_the_image_with_align_corners():
    par = PAR(num_iter=2)
    images = torch.rand(1, 3, 16, 12)
    small = torch.rand(1, 2, 8, 6)
    up = torch.nn.functional.interpolate(small, size=(16, 12), mode="bilinear", align_corners=True)
    torch.testing.assert_close(par(images, small), par(images, up))


def test_zero_iterations_is_identity_and_bad_args():
    masks = torch.rand(1, 2, 5, 5)
    torch.testing.assert_close(PAR(num_iter=0)(torch.rand(1, 3, 5, 5), masks), masks)
    with pytest.raises(ValueError, match="0"):
        PAR(dilations=(0, 1))
    with pytest.raises(ValueError, match=r"\(3, 2, 5, 5\)"):
        PAR()(torch.rand(1, 3, 5, 5), torch.rand(3, 2, 5, 5))
