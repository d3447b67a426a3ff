from __future__ import annotations

import pytest

from clustercam_pl.cam.config import CAMConfig


def test_background_scores_in_wrong_order_is_a_clear_error():
    with pytest.raises(ValueError, match=r"background scores in the wrong order: cam.bg_high=0.3 must be greater than cam.bg_low=0.5"):
        CAMConfig(bg_high=0.3, bg_low=0.5)


def test_cam_config_normalises_sequences_and_checks_values():
    cfg = CAMConfig(scales=[1, 0.5], par_dilations=[1, 2])
    assert cfg.scales == (1.0, 0.5) and cfg.par_dilations == (1, 2)
    assert cfg.cam_background == pytest.approx(0.4)
    with pytest.raises(ValueError, match="scales"):
        CAMConfig(scales=[1.0, -0.5])
    with pytest.raises(ValueError, match="PAR"):
        CAMConfig(par_iters=-1)
