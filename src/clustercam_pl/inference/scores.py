"""Class probabilities kept at reduced resolution, so post-processing can be redone without the network.

`eval save_scores=true` stores each image's probabilities at 1/`factor` of its size (area-averaged,
float16, compressed npz); `eval scores_from=<that folder>` brings them back to full size (bilinear)
and runs any post-processing (CRF settings, refinement, ...) on them: a day of forward passes is not
repeated to try another CRF. Both halves live here so that the round trip is one definition.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def reduce_scores(probs: Tensor, factor: int) -> np.ndarray:
    """(C, h, w) probabilities -> float16 (C, ceil(h / factor), ceil(w / factor)), area-averaged."""
    if factor < 1:
        raise ValueError(f"score_downscale={factor} must be a whole number >= 1 (1: full resolution)")
    h, w = probs.shape[-2:]
    small = probs.float()
    if factor > 1:
        size = (-(-h // factor), -(-w // factor))
        small = F.interpolate(small[None], size=size, mode="area")[0]  # (C, h/f, w/f)
    return small.cpu().numpy().astype(np.float16)


def expand_scores(small: np.ndarray, size: tuple[int, int], device: torch.device | str = "cpu") -> Tensor:
    """float16 (C, h', w') -> float32 (C, h, w) probabilities at `size`, bilinear, renormalised to sum 1."""
    t = torch.from_numpy(np.asarray(small, dtype=np.float32)).to(device)  # (C, h', w')
    if tuple(t.shape[-2:]) != tuple(size):
        t = F.interpolate(t[None], size=size, mode="bilinear", align_corners=False)[0]  # (C, h, w)
    return t / t.sum(0, keepdim=True).clamp_min(1e-12)


def round_trip(probs: Tensor, factor: int) -> Tensor:
    """What scoring from saved scores sees: `probs` (C, h, w) reduced and brought back."""
    return expand_scores(reduce_scores(probs, factor), tuple(probs.shape[-2:]), probs.device)
