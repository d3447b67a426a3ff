"""Dense CRF post-processing of segmentation probabilities (VOC evaluation).

The reference's ``seg/tool/imutils.crf_inference_inf`` (DCVL-WSSS/ClusterCAM): a fully connected
CRF (pydensecrf) with unaries ``-log p`` (clipped at 1e-5), a Gaussian smoothness kernel and a
bilateral appearance kernel, run for a fixed number of mean-field iterations.
"""

from __future__ import annotations

import numpy as np

_MISSING = "dense CRF needs the optional dependency pydensecrf2: pip install 'clustercam_pl[crf]'"


def dense_crf(
    image_uint8: np.ndarray,
    probs: np.ndarray,
    n_iter: int = 10,
    gauss_sxy: float = 4,
    gauss_compat: float = 3,
    bilat_sxy: float = 83,
    bilat_srgb: float = 5,
    bilat_compat: float = 3,
) -> np.ndarray:
    """Refine class probabilities ``probs`` (C, H, W) on the RGB image ``image_uint8`` (H, W, 3).

    Returns the CRF marginals (C, H, W) as float32; take ``argmax(0)`` for the label map.
    pydensecrf is imported here so the package works without it.
    """
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError as err:
        raise ImportError(_MISSING) from err

    if image_uint8.ndim != 3 or image_uint8.shape[2] != 3:
        raise ValueError(f"image_uint8 must be (H, W, 3), got shape {image_uint8.shape}")
    if probs.ndim != 3 or probs.shape[1:] != image_uint8.shape[:2]:
        raise ValueError(
            f"probs must be (C, H, W) matching the image's (H, W) = {image_uint8.shape[:2]}, "
            f"got {probs.shape}"
        )
    if n_iter < 0:
        raise ValueError(f"n_iter must be >= 0, got {n_iter}")
    n_labels, h, w = probs.shape
    # pydensecrf wants C-contiguous uint8 RGB and float32 unaries; it keeps a pointer to the image.
    image = np.ascontiguousarray(image_uint8, dtype=np.uint8)
    unary = np.ascontiguousarray(unary_from_softmax(np.asarray(probs, dtype=np.float32)))  # (C, H * W)

    crf = dcrf.DenseCRF2D(w, h, n_labels)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=gauss_sxy, compat=gauss_compat)
    crf.addPairwiseBilateral(sxy=bilat_sxy, srgb=bilat_srgb, rgbim=image, compat=bilat_compat)
    marginals = crf.inference(n_iter)
    return np.asarray(marginals, dtype=np.float32).reshape(n_labels, h, w)
