"""Pixel-adaptive refinement (PAR) of class maps with local colour affinities.

PAR comes from AFA/ToCo; ClusterCAM uses it unchanged except for the epsilon (1e-5 instead of 1e-8),
see DCVL-WSSS/ClusterCAM ``PAR.py``. Each pixel looks at 8 neighbours (the 3x3 ring) at several
dilations with replicate padding. Its affinity to a neighbour is a softmax over the neighbours of
the negative squared colour difference (scaled by the unbiased std of the neighbour colours), plus a
small constant positional term. The maps are then propagated ``num_iter`` times through these
weights.

Compared with the reference this implementation is numerically the same function but

* gathers the neighbours by slicing one replicate-padded tensor instead of one-hot dilated convs
  (padding by the largest dilation then slicing equals padding by each dilation: replicate padding
  only clamps indices);
* precomputes the positional softmax once (it does not depend on the input);
* propagates all channels of all images together, accumulating the 8 x len(dilations) weighted
  neighbours one at a time instead of materialising a (B, C, 48, H, W) tensor;
* exposes :meth:`PAR.affinity` and :meth:`PAR.propagate` so that several sets of maps on the same
  images (e.g. the high- and low-background maps of the pseudo label) share one affinity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# The 3x3 ring in the reference kernel order (row-major, centre skipped): (dy, dx).
_RING: tuple[tuple[int, int], ...] = tuple(
    (dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)
)


class PAR(nn.Module):
    """Pixel-adaptive refinement: ``forward(images, masks)`` refines ``masks`` along image edges.

    Args:
        dilations: neighbour distances; each contributes the 8 pixels of the dilated 3x3 ring.
        num_iter: propagation steps.
        w1: temperature of the colour and position affinities.
        w2: weight of the positional softmax added to the colour softmax. Each step multiplies a
            constant map by ``1 + w2`` (the weights sum to ``1 + w2``), as in the reference.
        eps: added to the standard deviations (the reference's 1e-5).
    """

    def __init__(
        self,
        dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
        num_iter: int = 10,
        w1: float = 0.3,
        w2: float = 0.01,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        dilations = tuple(int(d) for d in dilations)
        if not dilations or min(dilations) < 1:
            raise ValueError(f"dilations must be positive integers, got {dilations}")
        if num_iter < 0:
            raise ValueError(f"num_iter must be >= 0, got {num_iter}")
        if w1 <= 0:
            raise ValueError(f"w1 must be > 0, got {w1}")
        self.dilations = dilations
        self.num_iter = int(num_iter)
        self.w1 = float(w1)
        self.w2 = float(w2)
        self.eps = float(eps)
        self.pad = max(dilations)
        # Neighbour offsets (dy, dx), dilation-major like the reference's concatenation order.
        self.offsets: tuple[tuple[int, int], ...] = tuple(
            (dy * d, dx * d) for d in dilations for dy, dx in _RING
        )
        self.register_buffer("pos_weight", self._positional_weight(), persistent=False)

    @property
    def num_neighbours(self) -> int:
        return len(self.offsets)

    def _positional_weight(self) -> torch.Tensor:
        """``w2 * softmax(-(dist / (std(dist) + eps) / w1) ** 2)`` over the neighbours: a constant."""
        # dist = d for axis neighbours and d * sqrt(2) for diagonals (reference ``PAR.get_pos``).
        dist = torch.tensor(
            [
                d * (math.sqrt(2.0) if dy != 0 and dx != 0 else 1.0)
                for d in self.dilations
                for dy, dx in _RING
            ],
            dtype=torch.float64,
        )  # (N,)
        pos_aff = -((dist / (dist.std() + self.eps) / self.w1) ** 2)  # unbiased std, as torch.std
        return (self.w2 * pos_aff.softmax(0)).to(torch.float32)  # (N,)

    def _neighbours(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The replicate-padded neighbours of every pixel: N views of shape (B, C, H, W)."""
        h, w = x.shape[-2:]
        p = self.pad
        padded = F.pad(x, [p, p, p, p], mode="replicate")  # (B, C, H + 2p, W + 2p)
        return [padded[..., p + dy : p + dy + h, p + dx : p + dx + w] for dy, dx in self.offsets]

    def affinity(self, images: torch.Tensor) -> torch.Tensor:
        """Propagation weights (B, N, H, W) of ``images`` (B, 3, H, W); each pixel's sum is ``1 + w2``."""
        if images.dim() != 4:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        nb = torch.stack(self._neighbours(images), dim=2)  # (B, 3, N, H, W)
        std = nb.std(dim=2, keepdim=True)  # (B, 3, 1, H, W), unbiased like the reference
        diff = (nb - images.unsqueeze(2)).abs()  # (B, 3, N, H, W)
        aff = -((diff / (std + self.eps) / self.w1) ** 2)
        aff = aff.mean(dim=1)  # (B, N, H, W): averaged over the colour channels
        pos = self.pos_weight.to(aff.dtype).view(1, -1, 1, 1)  # (1, N, 1, 1)
        return aff.softmax(dim=1) + pos  # (B, N, H, W)

    def propagate(self, masks: torch.Tensor, aff: torch.Tensor) -> torch.Tensor:
        """``num_iter`` steps of ``m <- sum_n m_n * aff_n`` for every channel of ``masks`` (B, C, H, W)."""
        if masks.shape[0] != aff.shape[0] or masks.shape[-2:] != aff.shape[-2:]:
            raise ValueError(
                f"masks {tuple(masks.shape)} and affinity {tuple(aff.shape)} disagree on batch or size"
            )
        weights = aff.unsqueeze(2).unbind(dim=1)  # N x (B, 1, H, W), broadcast over channels
        for _ in range(self.num_iter):
            out = torch.zeros_like(masks)  # (B, C, H, W)
            for nb, wgt in zip(self._neighbours(masks), weights, strict=True):
                out.addcmul_(nb, wgt)
            masks = out
        return masks

    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Refine ``masks`` (B, C, h', w') on ``images`` (B, 3, H, W) in [0, 1]; returns (B, C, H, W).

        The masks are first resized to the image size (bilinear, align_corners=True, as the reference).
        """
        if masks.dim() != 4 or masks.shape[0] != images.shape[0]:
            raise ValueError(
                f"masks must be (B, C, h, w) with the batch of images {tuple(images.shape)}, "
                f"got {tuple(masks.shape)}"
            )
        if masks.shape[-2:] != images.shape[-2:]:
            masks = F.interpolate(masks, size=images.shape[-2:], mode="bilinear", align_corners=True)
        return self.propagate(masks, self.affinity(images))

    def extra_repr(self) -> str:
        return (
            f"dilations={self.dilations}, num_iter={self.num_iter}, "
            f"w1={self.w1}, w2={self.w2}, eps={self.eps}"
        )
