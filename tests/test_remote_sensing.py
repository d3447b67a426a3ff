"""Remote sensing: N-band inputs, the ISPRS prepare step, sliding-window prediction, end to end.

The stand-in release (`isprs_fakes`) has the exact formats of ISPRS Potsdam: 4-band uint8 RGBIR TIFF
tiles and RGB-coded label TIFFs, written with tifffile.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from hydra import compose
from PIL import Image

from clustercam_pl.checkpoint import LoadedCheckpoint, load_checkpoint
from clustercam_pl.checkpoint.imagenet import adapt_input_conv, imagenet_to_ours
from clustercam_pl.data.datamodule import WSSSDataModule
from clustercam_pl.data.imageio import ImageReadError, read_bands
from clustercam_pl.data.layout import read_manifest
from clustercam_pl.data.prepare_common import PrepareError
from clustercam_pl.data.prepare_potsdam import (
    ISPRS_CLASSES,
    POTSDAM,
    decode_label,
    patch_starts,
    prepare_isprs,
)
from clustercam_pl.data.prepare_vaihingen import VAIHINGEN
from clustercam_pl.data.transforms import build_train_transform
from clustercam_pl.inference.network import predict, predict_windows, window_starts
from clustercam_pl.models import NetConfig
from helpers import TINY_NET_OVERRIDES, compose_eval, compose_train, hydra_config, tiny_net
from isprs_fakes import TRAIN_TILES, VAL_TILES, bands_for, make_potsdam_tree, rgb_label, tile_classes

TILES = dict(train_tiles=list(TRAIN_TILES), val_tiles=list(VAL_TILES))


@pytest.fixture
def potsdam(tmp_path):
    tree = make_potsdam_tree(tmp_path / "raw")
    report = prepare_isprs(POTSDAM, tree.root, tmp_path / "data", patch_size=32, progress=False, **TILES)
    return tree, tmp_path / "data", report


# ------------------------------------------------------------------------------ network and weights
def test_adapt_input_conv_repeats_and_rescales_the_rgb_filters():
    w = torch.randn(8, 3, 4, 4)
    four = adapt_input_conv(w, 4)  # (8, 4, 4, 4): R G B R, times 3/4
    assert four.shape == (8, 4, 4, 4)
    assert torch.allclose(four[:, :3], w * 0.75) and torch.allclose(four[:, 3], w[:, 0] * 0.75)
    assert torch.allclose(adapt_input_conv(w, 1), w.sum(1, keepdim=True))
    x = torch.rand(1, 1, 4, 4)  # the same signal in 6 bands: the response of the RGB image is kept
    rgb = torch.nn.functional.conv2d(x.expand(1, 3, 4, 4), w)
    assert torch.allclose(torch.nn.functional.conv2d(x.expand(1, 6, 4, 4), adapt_input_conv(w, 6)), rgb, atol=1e-5)
    assert adapt_input_conv(w, 13).shape == (8, 13, 4, 4)


def test_imagenet_weights_are_adapted_to_four_bands_with_a_log_line(caplog):
    rgb_net = tiny_net(3)
    vit_sd = {k.removeprefix("backbone."): v for k, v in rgb_net.state_dict().items() if k.startswith("backbone.")}
    vit_sd = {"cls_token": vit_sd["cls_token"][:, :1], "pos_embed": vit_sd["pos_embed"][:, 2:],
              "patch_embed.proj.weight": vit_sd["patch_embed.proj.weight"],
              "patch_embed.proj.bias": vit_sd["patch_embed.proj.bias"]}
    net = tiny_net(3, in_chans=4, mean=[0.5] * 4, std=[0.25] * 4)
    with caplog.at_level(logging.INFO), pytest.raises(ValueError, match="missing in the weights"):
        imagenet_to_ours(vit_sd, net, "rgb.pth")  # the blocks are missing here; the stem is adapted first
    assert "rgb.pth: the RGB patch-embedding filters are repeated cyclically over the 4 bands" in caplog.text


def test_net_config_in_chans_needs_its_normalisation_and_old_configs_load_as_rgb():
    assert NetConfig.from_dict({"num_classes": 2}).in_chans == 3  # a stored config without the field
    old = load_checkpoint(Path(__file__).parent / "fixtures" / "format2_synthetic_tiny.ckpt").net.cfg
    assert (old.in_chans, old.mean, old.std) == (3, None, None)  # written before the fields: RGB, ImageNet's
    assert NetConfig(num_classes=2).normalization[0] == pytest.approx((0.485, 0.456, 0.406))
    with pytest.raises(ValueError, match="net.in_chans=4 needs net.mean and net.std"):
        NetConfig(num_classes=2, in_chans=4)
    with pytest.raises(ValueError, match="net.mean has 3 values, net.in_chans=4"):
        NetConfig(num_classes=2, in_chans=4, mean=[0.5] * 3, std=[0.2] * 3)
    net = tiny_net(3, in_chans=4, mean=[0.5] * 4, std=[0.25] * 4)
    with pytest.raises(ValueError, match="input has 3 channels .* net.in_chans=4"):
        net(torch.zeros(1, 3, 32, 32))


def test_a_checkpoint_refuses_data_of_another_band_count(caplog):
    rgb = LoadedCheckpoint(tiny_net(5), "rgb.ckpt", "framework", 0, 0)
    with pytest.raises(ValueError, match="rgb.ckpt takes 3-band images, but data=potsdam has 4 bands"):
        rgb.check_channels(4, ((0.5,) * 4, (0.2,) * 4), "potsdam")
    four = LoadedCheckpoint(tiny_net(5, in_chans=4, mean=[0.5] * 4, std=[0.2] * 4), "ir.ckpt", "framework", 0, 0)
    four.check_channels(4, ((0.5,) * 4, (0.2,) * 4), "potsdam")
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        four.check_channels(4, ((0.4,) * 4, (0.2,) * 4), "potsdam")
    assert "ir.ckpt was trained with the band mean / std" in caplog.text


def test_reference_recipe_is_refused_for_four_bands_with_the_hint():
    with pytest.raises(ValueError, match="pass data.train_transform=plain"):
        build_train_transform("reference", 32, mean=[0.5] * 4, std=[0.2] * 4)


# ------------------------------------------------------------------------------------ prepare
def test_patch_grid_covers_the_tile():
    assert patch_starts(6000, 256, 256)[-2:] == [5632, 5744] and len(patch_starts(6000, 256, 256)) == 24
    assert patch_starts(96, 32, 32) == [0, 32, 64]
    assert window_starts(100, 64, 0.25) == [0, 36] and window_starts(50, 64, 0.25) == [0]


def test_prepare_cuts_tiles_tags_from_the_ground_truth_and_splits_by_tile(potsdam):
    tree, root, report = potsdam
    m = read_manifest(root, "potsdam")
    assert m.classes == ISPRS_CLASSES and m.has_background is False and m.in_channels == 4
    train, val = (m.path(m.split(s).list_file).read_text().split() for s in ("train", "val"))
    assert {i.split("_y")[0] for i in train} == set(TRAIN_TILES) and {i.split("_y")[0] for i in val} == set(VAL_TILES)
    assert len(val) == 9  # 96 px at 32: 3 x 3 patches, all kept
    labels = json.loads((root / "cls_labels.json").read_text())["labels"]
    for image_id in train + val:
        tile, rest = image_id.split("_y")
        y, x = (int(v) for v in rest.split("_x"))
        gt = tree.classes[tile][y : y + 32, x : x + 32]
        present = [c for c in range(5) if (gt == c).sum() >= 0.01 * (gt < 5).sum()]
        assert labels[image_id] == present
        patch = read_bands(root / "patches" / f"{image_id}.tif", 4)  # every band kept
        assert np.array_equal(patch, tifffile.imread(tree.image(tile))[y : y + 32, x : x + 32])
        mask = np.array(Image.open(root / "SegmentationClass" / f"{image_id}.png"))
        assert np.array_equal(mask, np.where(gt == 5, 255, gt))  # clutter void, c = class c
    pixels = np.concatenate([tifffile.imread(root / "patches" / f"{i}.tif").reshape(-1, 4) for i in train]) / 255
    assert m.normalization[0] == pytest.approx(pixels.mean(0), abs=1e-5)
    assert m.normalization[1] == pytest.approx(pixels.std(0), abs=1e-5)
    assert report["patches_per_split"] == {"train": len(train), "val": 9}


def test_a_tile_in_both_splits_is_refused(tmp_path):
    tree = make_potsdam_tree(tmp_path / "raw")
    with pytest.raises(PrepareError, match=r"tile\(s\) \['2_10'\] are in --train-tiles and in --val-tiles"):
        prepare_isprs(POTSDAM, tree.root, tmp_path / "out", train_tiles=["2_10"], val_tiles=["2_10", "2_13"],
                      progress=False)


def test_unknown_label_colour_is_refused_naming_the_file_and_colour(tmp_path):
    tree = make_potsdam_tree(tmp_path / "raw")
    rgb = rgb_label(tree.classes["2_11"])
    rgb[40, 50] = (12, 34, 56)
    tifffile.imwrite(tree.label("2_11"), rgb, photometric="rgb")
    with pytest.raises(PrepareError) as e:
        prepare_isprs(POTSDAM, tree.root, tmp_path / "out", patch_size=32, progress=False, **TILES)
    msg = str(e.value)
    assert str(tree.label("2_11")) in msg and "(12, 34, 56) at row 40, column 50" in msg and "--skip-bad" in msg
    rgb[40, 50] = (250, 250, 252)  # near impervious surfaces: accepted with a tolerance
    assert decode_label(rgb, "x.tif", tolerance=5)[40, 50] == 0


def test_band_count_mismatch_is_refused_naming_the_file(tmp_path):
    tree = make_potsdam_tree(tmp_path / "raw", bands=3)  # an RGB release given as RGBIR
    with pytest.raises(PrepareError) as e:
        prepare_isprs(POTSDAM, tree.root, tmp_path / "out", patch_size=32, progress=False, **TILES)
    assert f"image {tree.image('2_10')} has 3 band(s), the dataset / network expects 4" in str(e.value)


def test_a_patch_with_another_band_count_is_refused_by_the_dataset(potsdam):
    _, root, _ = potsdam
    image_id = (root / "splits" / "val.txt").read_text().split()[0]
    path = root / "patches" / f"{image_id}.tif"
    tifffile.imwrite(path, np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    dm = WSSSDataModule("potsdam", str(root), train_transform="plain", crop_size=32, global_batch_size=2)
    dm.setup("validate")
    with pytest.raises(ImageReadError, match=f"image {path} has 3 band"):
        dm.val_dataset[0]


def test_the_datamodule_gives_four_normalised_bands(potsdam):
    _, root, _ = potsdam
    dm = WSSSDataModule("potsdam", str(root), train_transform="plain", crop_size=32, global_batch_size=2)
    dm.setup("fit")
    assert (dm.in_channels, dm.has_background) == (4, False)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 4, 32, 32)
    with pytest.raises(ValueError, match="data.train_transform=plain"):
        WSSSDataModule("potsdam", str(root), train_transform="reference", crop_size=32).setup("fit")


# ------------------------------------------------------------------------------ sliding windows
def test_a_window_that_covers_the_image_predicts_as_the_whole_image():
    torch.manual_seed(0)
    net = tiny_net(3, in_chans=4, mean=[0.5] * 4, std=[0.25] * 4).eval()
    x = torch.randn(1, 4, 48, 64)
    whole, win = predict(net, x), predict_windows(net, x, window=64, overlap=0.25)
    assert torch.equal(whole.probs, win.probs) and torch.equal(whole.cls_logits, win.cls_logits)
    tiled = predict_windows(net, torch.randn(1, 4, 80, 112), window=32, overlap=0.5)
    assert tiled.probs.shape == (1, net.cfg.num_labels, 80, 112)
    assert torch.allclose(tiled.probs.sum(1), torch.ones(1, 80, 112), atol=1e-5)  # averaged distributions


# ------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_prepare_train_eval_predict_a_potsdam_stand_in(tmp_path):
    from clustercam_pl.eval import evaluate
    from clustercam_pl.predict import run_predict
    from clustercam_pl.train import train

    tree = make_potsdam_tree(tmp_path / "raw128", side=128)  # 64 px patches: CAMs at scale 0.75 need 32 px
    root = tmp_path / "data64"
    prepare_isprs(POTSDAM, tree.root, root, patch_size=64, stride=32, progress=False, **TILES)  # 3 x 3 a tile
    overrides = ["+experiment=potsdam_vits", "logger=none", "net=tiny", *TINY_NET_OVERRIDES, "model.pretrained=null",
                 f"data.data_root={root}", "data.crop_size=64", "data.global_batch_size=4", "data.val_batch_size=3",
                 "data.num_workers=0", "data.pin_memory=false", "cam.par_iters=2", "trainer=cpu",
                 "trainer.precision=32-true", "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "trainer.enable_progress_bar=false",
                 "trainer.enable_model_summary=false", "model.seg_start_epoch=0"]
    summary = train(compose_train(overrides, output_dir=tmp_path / "train"))
    assert list(summary["per_class_iou"]) == list(ISPRS_CLASSES) and np.isfinite(summary["val/seg_miou"])
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    cfg = load_checkpoint(ckpt).net.cfg
    assert (cfg.in_chans, cfg.background) == (4, False)
    assert cfg.mean == pytest.approx(read_manifest(root, "potsdam").normalization[0])

    ecfg = compose_eval(["data=potsdam", f"data.data_root={root}", "data.val_batch_size=3", "data.num_workers=0",
                         "device=cpu", f"ckpt_path={ckpt}", "eval=ss"], tmp_path / "eval")
    result = evaluate(ecfg)
    assert list(result["per_class_iou"]) == list(ISPRS_CLASSES) and 0 <= result["miou"] <= 1

    inputs = tmp_path / "tiles"
    inputs.mkdir()
    (inputs / "tile.tif").write_bytes(tree.image(VAL_TILES[0]).read_bytes())  # a whole 128 x 128 RGBIR tile
    tifffile.imwrite(inputs / "rgb.tif", np.zeros((40, 40, 3), np.uint8), photometric="rgb")  # wrong bands
    with hydra_config():
        pcfg = compose("predict", overrides=["device=cpu", "progress=false", f"ckpt_path={ckpt}", f"input={inputs}",
                                             f"out_dir={tmp_path / 'pred'}", "window=64", "overlap=0.25"])
    summary = run_predict(pcfg)
    [record] = [json.loads(line) for line in (tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()]
    assert (record["width"], record["height"]) == (128, 128) and set(record["scores"]) == set(ISPRS_CLASSES)
    mask = np.array(Image.open(tmp_path / "pred" / "tile.png"))
    assert mask.shape == (128, 128) and mask.max() < 5
    assert summary["failed"] == [str(inputs / "rgb.tif")]
    assert "has 3 band(s), the dataset / network expects 4" in (tmp_path / "pred" / "failed.txt").read_text()


def test_prepare_vaihingen_reads_its_release_names_and_three_irrg_bands(tmp_path):
    raw = tmp_path / "ISPRS_Vaihingen"
    for d in ("top", "gts_for_participants"):
        (raw / d).mkdir(parents=True)
    for k, area in enumerate(("1", "3", "2")):
        classes = tile_classes(64, k)
        tifffile.imwrite(raw / "top" / f"top_mosaic_09cm_area{area}.tif", bands_for(classes, 3, k), photometric="rgb")
        tifffile.imwrite(raw / "gts_for_participants" / f"top_mosaic_09cm_area{area}.tif", rgb_label(classes),
                         photometric="rgb")
    report = prepare_isprs(VAIHINGEN, raw, tmp_path / "out", patch_size=32, progress=False)  # the official areas
    assert report["tiles"] == {"train": ["1", "3"], "val": ["2"]}
    assert "5" in report["official_tiles_missing"] and "4" in report["official_tiles_missing"]
    m = read_manifest(tmp_path / "out", "vaihingen")
    assert (m.in_channels, m.has_background, len(m.normalization[0])) == (3, False, 3)
    dm = WSSSDataModule("vaihingen", str(tmp_path / "out"), train_transform="plain", crop_size=32, global_batch_size=2)
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["image"].shape == (2, 3, 32, 32)
