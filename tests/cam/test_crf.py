"""Dense CRF helper on a small synthetic image."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pydensecrf.densecrf", reason="optional dependency pydensecrf2 is not installed")

from clustercam_pl.inference.crf import dense_crf  # noqa: E402


def test_crf_snaps_uncertain_probabilities_to_image_edges():
    h, w = 24, 32
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[:, w // 2 :] = 255  # left black, right white
    # class 1 slightly favoured on the right, but with a noisy, blurred boundary
    rng = np.random.default_rng(0)
    p1 = np.where(np.arange(w) >= w // 2, 0.6, 0.4)[None, :].repeat(h, 0) + rng.uniform(-0.15, 0.15, (h, w))
    probs = np.stack([1 - p1, p1]).astype(np.float32)
    out = dense_crf(image, probs)
    assert out.shape == (2, h, w) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-4)
    label = out.argmax(0)
    assert (label[:, : w // 2] == 0).all() and (label[:, w // 2 :] == 1).all()
    assert (probs.argmax(0)[:, : w // 2] == 1).any()  # the input was wrong somewhere the CRF fixed
    # the CRF made the decisions more confident
    assert np.abs(out[1] - 0.5).mean() > np.abs(probs[1] - 0.5).mean()


def test_crf_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(8, 8\)"):
        dense_crf(np.zeros((8, 8, 3), np.uint8), np.full((2, 8, 9), 0.5, np.float32))
