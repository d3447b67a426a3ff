from __future__ import annotations

import pytest

from clustercam_pl.cam.config import CAMConfig
from clustercam_pl.models import NetConfig


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


def test_cam_background_is_the_mean_unless_set():
    assert CAMConfig().cam_bg is None and CAMConfig().cam_background == pytest.approx(0.4)
    assert CAMConfig(cam_bg=0.2).cam_background == 0.2
    with pytest.raises(ValueError, match=r"^cam\.cam_bg=-1\.0 is out of range: must be in \[0, 1\]$"):
        CAMConfig(cam_bg=-1.0)


def test_stored_settings_of_earlier_versions_load():
    # Earlier checkpoints stored ignore_index (always 255, the masks' void value) and cam_bg=-1 for "the mean".
    old = {"cam_layers": 2, "scales": [1.0, 0.5], "ignore_index": 255, "cam_bg": -1.0, "dropped_key": 1}
    assert CAMConfig.from_stored(old, "run/last.ckpt") == CAMConfig(cam_layers=2, scales=(1.0, 0.5))
    assert CAMConfig.from_stored(old, "x", flip=False).flip is False
    with pytest.raises(ValueError, match=r"^run/last\.ckpt was trained with cam\.ignore_index=7; .* with 255, the void "
                                         r"value of the masks, only\. Retrain it"):
        CAMConfig.from_stored(old | {"ignore_index": 7}, "run/last.ckpt")


def test_cam_layers_are_checked_against_the_network_once():
    CAMConfig(cam_layers=3).check_for(NetConfig(depth=3))
    with pytest.raises(ValueError, match=r"^cam\.cam_layers=4 must be in 1\.\.3, the network's depth \(net\.depth=3\)$"):
        CAMConfig(cam_layers=4).check_for(NetConfig(depth=3))
