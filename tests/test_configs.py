"""Every config option composes and its objects instantiate; config mistakes give clear errors."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from clustercam_pl.entry import check_config, instantiate_dict
from helpers import CONF_DIR, TINY_OVERRIDES, compose_train, hydra_config

GROUPS = ["data", "net", "cam", "loss", "optim", "trainer", "callbacks", "logger", "debug"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.slow  # every option file of every group: ~35 compositions
@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes_and_instantiates(group, option, tmp_path, monkeypatch):
    monkeypatch.delenv("CLUSTERCAM_DATA", raising=False)
    cfg = compose_train([f"{group}={option}"], output_dir=tmp_path)
    if group in ("net", "cam", "loss", "optim"):
        kw = {"num_classes": 3} if group == "net" else {}
        instantiate(cfg[group], _convert_="all", **kw)
    elif group in ("callbacks", "logger"):
        instantiate_dict(cfg.get(group))
    elif group == "data":
        dm = instantiate(cfg.data)
        if option == "folder":  # K is read from the prepared root, which only data.data_root names
            with pytest.raises(FileNotFoundError, match=r"^data\.data_root is not set for data\.dataset=folder; prepare it with"):
                _ = dm.num_classes
        else:
            assert dm.num_classes in (4, 5, 20, 80)  # synthetic, ISPRS, VOC, COCO


@pytest.mark.slow  # every experiment file: ~16 compositions
@pytest.mark.parametrize("name", _options("experiment"))
def test_every_experiment_composes(name, tmp_path):
    cfg = compose_train([f"+experiment={name}"], output_dir=tmp_path)
    assert cfg.task_name == name
    check_config(cfg)
    instantiate(cfg.cam, _convert_="all")


def test_optuna_search_composes(tmp_path):
    with hydra_config():
        from hydra import compose

        cfg = compose("train", overrides=["hparams_search=optuna", "+experiment=synthetic"], return_hydra_config=True)
    assert cfg.hydra.sweeper.direction == "maximize"
    assert "net.cluster_grid" in cfg.hydra.sweeper.params


def test_unknown_experiment_lists_the_known_ones():
    with pytest.raises(ConfigCompositionException) as e:
        compose_train(["+experiment=voc_vith"])
    msg = str(e.value) + str(e.value.__cause__)
    assert "experiment/voc_vith" in msg
    for known in ("voc_vits", "coco_vits", "synthetic"):
        assert known in msg


def test_cluster_grid_larger_than_patch_grid_is_refused(tmp_path):
    cfg = compose_train([*TINY_OVERRIDES, "net.cluster_grid=[9,9]"], output_dir=tmp_path)
    with pytest.raises(ValueError, match=r"net.cluster_grid=\[9, 9\] is larger than the patch grid 8x8 of data.synthetic.image_size=64"):
        check_config(cfg)


def test_background_scores_in_wrong_order_fail_at_instantiation(tmp_path):
    cfg = compose_train(["cam.bg_high=0.2", "cam.bg_low=0.4"], output_dir=tmp_path)
    with pytest.raises(Exception, match="background scores in the wrong order"):
        instantiate(cfg.cam, _convert_="all")
