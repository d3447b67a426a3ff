"""Dense CRF post-processing of segmentation probabilities (VOC evaluation).

The reference's ``seg/tool/imutils.crf_inference_inf`` (DCVL-WSSS/ClusterCAM): a fully connected
CRF (pydensecrf) with unaries ``-log p`` (clipped at 1e-5), a Gaussian smoothness kernel and a
bilateral appearance kernel, run for a fixed number of mean-field iterations.

The CRF is CPU work of about a second per VOC image; `inference.pool.StepPool` runs it (as the
post-processing step `inference.steps.crf`) in worker processes while the caller keeps running the
network, so it does not serialise a GPU run. torch is imported inside the functions that need it, so
a worker process starts with numpy and pydensecrf only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

CRF_MISSING = (
    "this protocol uses the dense CRF, which needs the optional dependency pydensecrf2: "
    "pip install 'clustercam_pl[crf]' (or pick a protocol without CRF: eval=ss, ms or ms_flip)"
)


@dataclass(frozen=True)
class CRFParams:
    """Dense CRF settings; the defaults are the reference's (``seg/tool/imutils.crf_inference_inf``)."""

    n_iter: int = 10
    gauss_sxy: float = 4
    gauss_compat: float = 3
    bilat_sxy: float = 83
    bilat_srgb: float = 5
    bilat_compat: float = 3

    def __post_init__(self) -> None:
        if self.n_iter < 0:
            raise ValueError(f"postprocess crf: n_iter must be >= 0, got {self.n_iter}")
        for key in ("gauss_sxy", "bilat_sxy", "bilat_srgb"):
            if getattr(self, key) <= 0:
                raise ValueError(f"postprocess crf: {key} must be > 0, got {getattr(self, key)}")

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def require_crf() -> None:
    """Fail at once (before any checkpoint is read) when pydensecrf is missing, naming the extra."""
    try:
        import pydensecrf.densecrf  # noqa: F401
        import pydensecrf.utils  # noqa: F401
    except ImportError as e:
        raise ImportError(CRF_MISSING) from e


def dense_crf(image_uint8: np.ndarray, probs: np.ndarray, params: CRFParams | None = None) -> np.ndarray:
    """Refine class probabilities ``probs`` (C, H, W) on the RGB image ``image_uint8`` (H, W, 3).

    Returns the CRF marginals (C, H, W) as float32; take ``argmax(0)`` for the label map.
    pydensecrf is imported here so the package works without it.
    """
    p = params or CRFParams()
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError as err:
        raise ImportError(CRF_MISSING) from err

    if image_uint8.ndim != 3 or image_uint8.shape[2] != 3:
        raise ValueError(f"image_uint8 must be (H, W, 3), got shape {image_uint8.shape}")
    if probs.ndim != 3 or probs.shape[1:] != image_uint8.shape[:2]:
        raise ValueError(
            f"probs must be (C, H, W) matching the image's (H, W) = {image_uint8.shape[:2]}, "
            f"got {probs.shape}"
        )
    n_labels, h, w = probs.shape
    # pydensecrf wants C-contiguous uint8 RGB and float32 unaries; it keeps a pointer to the image.
    image = np.ascontiguousarray(image_uint8, dtype=np.uint8)
    unary = np.ascontiguousarray(unary_from_softmax(np.asarray(probs, dtype=np.float32)))  # (C, H * W)

    crf = dcrf.DenseCRF2D(w, h, n_labels)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=p.gauss_sxy, compat=p.gauss_compat)
    crf.addPairwiseBilateral(sxy=p.bilat_sxy, srgb=p.bilat_srgb, rgbim=image, compat=p.bilat_compat)
    marginals = crf.inference(p.n_iter)
    return np.asarray(marginals, dtype=np.float32).reshape(n_labels, h, w)


def to_uint8_image(
    image: Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> np.ndarray:
    """ImageNet-normalised (3, H, W) -> uint8 (H, W, 3) RGB, rounded and clamped (never wrapped).
    `mean` / `std`: the normalisation (None: ImageNet's, `data.transforms`).

    Rounding (not truncation) gives back the exact pixels of the decoded file: normalising and
    de-normalising in float32 leaves errors of ~1e-5 levels either way. Clamping keeps an
    out-of-range value at 0 or 255, where the reference's uint8 cast would wrap it around.
    """
    import torch

    from clustercam_pl.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    mean = IMAGENET_MEAN if mean is None else mean
    std = IMAGENET_STD if std is None else std
    m = torch.tensor(mean, dtype=torch.float32, device=image.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=image.device).view(3, 1, 1)
    levels = ((image.float() * s + m) * 255).round().clamp(0, 255)  # (3, H, W)
    return np.ascontiguousarray(levels.to(torch.uint8).permute(1, 2, 0).cpu().numpy())  # (H, W, 3)


def crf_labels(image_uint8: np.ndarray, probs: np.ndarray, params: CRFParams | None = None) -> np.ndarray:
    """Label map (H, W) int64: the argmax of `dense_crf`'s marginals."""
    return dense_crf(image_uint8, probs, params).argmax(0)
