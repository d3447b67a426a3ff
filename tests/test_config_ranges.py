"""Numeric settings out of their valid range, and training crops that do not fit the patch grid, are
refused before training with the full config key in the message."""

from __future__ import annotations

import copy

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from clustercam_pl.cam.config import CAMConfig
from clustercam_pl.data.datamodule import WSSSDataModule
from clustercam_pl.entry import check_config
from clustercam_pl.losses import LossConfig
from clustercam_pl.optim import OptimConfig
from clustercam_pl.train import build, train
from clustercam_pl.utils.checks import check_range, describe_range
from helpers import TINY_OVERRIDES, compose_train

LR_RULE = (
    "valid: optim.lr > 0 (absolute), or optim.lr=null to use optim.lr_per_512 > 0 (lr = lr_per_512 * global batch / 512)"
)

CASES = [
    # the default config (optim=reference): lr_per_512 = 5e-4
    (["optim.lr=-0.001"], f"invalid learning rate: optim.lr=-0.001, optim.lr_per_512=0.0005; {LR_RULE}"),
    (["optim.lr_per_512=0"], f"invalid learning rate: optim.lr=null, optim.lr_per_512=0; {LR_RULE}"),
    (["optim.lr=0"], f"invalid learning rate: optim.lr=0, optim.lr_per_512=0.0005; {LR_RULE}"),  # 0 no longer means unset
    (["optim.lr=0.001", "optim.lr_per_512=-1"], f"invalid learning rate: optim.lr=0.001, optim.lr_per_512=-1; {LR_RULE}"),
    (["optim.lr=fast"], f"invalid learning rate: optim.lr='fast', optim.lr_per_512=0.0005; {LR_RULE}"),
    (["optim.weight_decay=-0.05"], "optim.weight_decay=-0.05 is out of range: must be >= 0"),
    (["optim.betas=[0.9,1.0]"], "optim.betas[1]=1.0 is out of range: must be in [0, 1)"),
    (["optim.betas=[0.9]"], "optim.betas=[0.9] must be two numbers, e.g. optim.betas=[0.9,0.999]"),
    (["optim.eps=0"], "optim.eps=0 is out of range: must be > 0"),
    (["optim.warmup_epochs=-1"], "optim.warmup_epochs=-1 is out of range: must be >= 0"),
    (["optim.warmup_lr=-1e-6"], "optim.warmup_lr=-1e-06 is out of range: must be >= 0"),
    (["optim.min_lr=-1e-5"], "optim.min_lr=-1e-05 is out of range: must be >= 0"),
    (["data.global_batch_size=0"], "data.global_batch_size=0 is out of range: must be >= 1"),
    (["data.global_batch_size=2.5"], "data.global_batch_size=2.5 is not valid: must be an integer >= 1"),
    (["data.val_batch_size=0"], "data.val_batch_size=0 is out of range: must be >= 1"),
    (["data.num_workers=-1"], "data.num_workers=-1 is out of range: must be >= 0"),
    (["data.synthetic.num_classes=0"], "data.synthetic.num_classes=0 is out of range: must be in [1, 8]"),
    (["data.synthetic.noise=0.6"], "data.synthetic.noise=0.6 is out of range: must be in [0.0, 0.5]"),
    (["data.synthetic.scale_range=[0.5,0.4]"], "data.synthetic.scale_range[1]=0.4 is out of range: must be in [0.5, 1.0]"),
    (["data.synthetic.num_train=-5"], "data.synthetic.num_train=-5 is out of range: must be >= 0"),
    (["loss.w_seg=-0.1"], "loss.w_seg=-0.1 is out of range: must be >= 0"),
    (["loss.w_cls=nan"], "loss.w_cls=nan is not valid: must be a finite number >= 0"),
    (["cam.cam_bg=-1"], "cam.cam_bg=-1 is out of range: must be in [0, 1]"),  # -1 no longer means the mean
    (["cam.cam_layers=13"], "cam.cam_layers=13 must be in 1..12, the network's depth (net.depth=12)"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0 is out of range: must be >= 1"),
    (["trainer.max_epochs=-1"], "trainer.max_epochs=-1 is out of range: must be >= 1"),
]


# A narrow network of the default depth (the messages name net.depth=12): building it costs little.
NARROW = ["net.embed_dim=32", "net.num_heads=2", "net.decoder_width=16"]


@pytest.fixture(scope="module")
def narrow_cfg() -> DictConfig:
    return compose_train(NARROW)


def with_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """`cfg` with value overrides set as Hydra parses them on the command line (one composition shared by
    the cases, instead of one each)."""
    cfg = copy.deepcopy(cfg)
    for override in OverridesParser.create().parse_overrides(overrides):
        OmegaConf.update(cfg, override.key_or_group, override.value(), merge=False)
    return cfg


@pytest.mark.parametrize("overrides,message", CASES, ids=[c[0][-1] for c in CASES])
def test_out_of_range_values_name_their_key(overrides, message, narrow_cfg, tmp_path):
    cfg = with_overrides(narrow_cfg, [*overrides, f"paths.output_dir={tmp_path}"])
    with pytest.raises((ValueError, InstantiationException)) as e:
        check_config(cfg)
        build(cfg)  # what train does next: every settings object validates itself once
    # Hydra wraps errors of the objects it builds; its message quotes ours and names the group.
    err = e.value.__cause__ if isinstance(e.value, InstantiationException) else e.value
    assert isinstance(err, ValueError) and str(err) == message
    if err is not e.value:
        assert repr(err) in str(e.value)


def test_the_defaults_pass_and_build_the_documented_settings(tmp_path):
    cfg = compose_train([], output_dir=tmp_path)
    check_config(cfg)
    _, model = build(cfg)
    # conf/{cam,loss,optim} restate no Python default differently; unset values are null, not magic numbers.
    assert model.cam_cfg == CAMConfig() and model.cam_cfg.cam_bg is None
    assert model.cam_cfg.cam_background == pytest.approx(0.4)  # the mean of bg_high 0.5 and bg_low 0.3
    assert model.criterion.cfg == LossConfig() and model.hparams["loss"] == {"w_cls": 1.0, "w_patch": 1.0, "w_seg": 0.1}
    assert model.optim_cfg == OptimConfig() and model.optim_cfg.lr is None
    assert model.optim_cfg.base_lr(9) == pytest.approx(5e-4 * 9 / 512)  # derived from lr_per_512


def test_crop_size_below_the_minimum():
    with pytest.raises(ValueError) as e:
        WSSSDataModule(dataset="voc", crop_size=8)
    assert str(e.value) == "data.crop_size=8 is out of range: must be >= 16"


def test_check_range_words():
    assert describe_range(gt=0) == "> 0" and describe_range(ge=1) == ">= 1" and describe_range(lt=3) == "< 3"
    assert describe_range(ge=0, lt=1) == "in [0, 1)" and describe_range(gt=0, le=1) == "in (0, 1]"
    check_range("a.b", 0.5, ge=0, lt=1)
    for bad, text in [(True, "a.b=True is not valid: must be a finite number in [0, 1)"),
                      ("1", "a.b='1' is not valid: must be a finite number in [0, 1)"),
                      (float("inf"), "a.b=inf is not valid: must be a finite number in [0, 1)"),
                      (1, "a.b=1 is out of range: must be in [0, 1)")]:
        with pytest.raises(ValueError) as e:
            check_range("a.b", bad, ge=0, lt=1)
        assert str(e.value) == text
    with pytest.raises(ValueError, match=r"^a\.n=2\.0 is not valid: must be an integer >= 1$"):
        check_range("a.n", 2.0, ge=1, integer=True)


CROP_CASES = [
    # the command: 60 px crops of 8 px patches
    (["+experiment=synthetic", "data.crop_size=60", "data.train_transform=plain"],
     "data.crop_size=60 is not a multiple of net.patch_size=8: the network would see 7x7 patches and their CAMs "
     "would be stretched over 60 pixels, misaligning the pseudo labels with the image; use data.crop_size=56 or "
     "data.crop_size=64"),
    # synthetic without crops: the image size is the training size
    (["+experiment=synthetic", "data.synthetic.image_size=60"],
     "data.synthetic.image_size=60 is not a multiple of net.patch_size=8: the network would see 7x7 patches and "
     "their CAMs would be stretched over 60 pixels, misaligning the pseudo labels with the image; use "
     "data.synthetic.image_size=56 or data.synthetic.image_size=64"),
    (["data=voc", "data.crop_size=20"],
     "data.crop_size=20 is not a multiple of net.patch_size=16: the network would see 1x1 patches and their CAMs "
     "would be stretched over 20 pixels, misaligning the pseudo labels with the image; use data.crop_size=16 or "
     "data.crop_size=32"),
    (["data=voc", "data.crop_size=12"],  # no valid size below: only the one above
     "data.crop_size=12 is not a multiple of net.patch_size=16: the network would see 0x0 patches and their CAMs "
     "would be stretched over 12 pixels, misaligning the pseudo labels with the image; use data.crop_size=16"),
]


@pytest.mark.parametrize("overrides,message", CROP_CASES, ids=["plain60", "image60", "voc20", "voc12"])
def test_crop_not_a_multiple_of_the_patch_is_refused(overrides, message, tmp_path):
    with pytest.raises(ValueError) as e:
        check_config(compose_train(overrides, output_dir=tmp_path))
    assert str(e.value) == message


def test_training_with_a_misfit_crop_stops_before_writing(tmp_path):
    cfg = compose_train([*TINY_OVERRIDES, "data.crop_size=60", "data.train_transform=plain"], output_dir=tmp_path)
    with pytest.raises(ValueError, match=r"^data\.crop_size=60 is not a multiple of net\.patch_size=8"):
        train(cfg)
    assert list(tmp_path.iterdir()) == []
    # VOC / COCO images trained at their own size (train_transform=none) have no single crop to check
    check_config(compose_train(["data=voc", "data.crop_size=60", "data.train_transform=none"], output_dir=tmp_path))
