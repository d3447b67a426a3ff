"""A mask of a prepared root with a value outside the class range (37 in a VOC val mask, a file edited
after `prepare`) is refused naming the file, wherever masks are read: the dataset, `eval`,
`export_labels` and the validation inside training. Before, eval died inside the metric and
the label export silently dropped those pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from wsss_fakes import write_palette_png

from clustercam_pl.data.imageio import ImageReadError, read_mask
from clustercam_pl.data.labels import mask_values_outside
from clustercam_pl.data.voc import VOCSegmentation
from clustercam_pl.eval import evaluate
from clustercam_pl.export_labels import export_pseudo_labels
from clustercam_pl.prepare import main as prepare
from clustercam_pl.train import train
from helpers import compose_config, tiny_net
from test_eval import save_framework

BAD_ID = "2007_000010"  # VOC val; its mask has 255 borders, so a plain max does not find the 37
VOC_DATA = ["data=voc", "data.num_workers=0", "data.pin_memory=false", "data.val_batch_size=1"]


@pytest.fixture
def broken_root(voc_tree, tmp_path: Path) -> tuple[Path, Path]:
    """A prepared fake VOC root whose val mask BAD_ID has one pixel of value 37 (after prepare)."""
    out = tmp_path / "voc"
    prepare(voc_tree.argv(out))
    path = out / "SegmentationClassAug" / f"{BAD_ID}.png"
    mask = read_mask(path)
    assert 255 in mask
    mask[3, 5] = 37
    write_palette_png(path, mask)
    return out, path


def expected(root: Path, path: Path) -> str:
    return (
        f"mask {path} has values [37] outside 0..20 and 255 (0 background, c + 1 class c, 255 ignore); fix or "
        f"replace the file, or re-create the root {root}: prepare it with `python -m clustercam_pl.prepare voc "
        "--voc-root VOCdevkit/VOC2012 --sbd-root benchmark_RELEASE/dataset --out DATA_ROOT` and pass "
        "`data.data_root=DATA_ROOT`"
    )


def test_mask_values_outside_the_class_range() -> None:
    m = np.array([[0, 3, 255], [20, 21, 254]], np.uint8)
    assert mask_values_outside(m, 20) == [21, 254]
    assert mask_values_outside(m, 254) == []
    assert mask_values_outside(np.array([[0, 4]], np.uint8), 3) == [4]  # no 255: the max alone finds it
    assert mask_values_outside(np.array([[0, 3]], np.uint8), 3) == []


def test_dataset_names_the_mask(broken_root) -> None:
    root, path = broken_root
    ds = VOCSegmentation(root, "val")
    assert ds.ids == [BAD_ID, "2007_000011"]
    assert ds[1]["mask"].max() == 255  # the other mask is fine
    with pytest.raises(ImageReadError) as e:
        ds[0]
    assert str(e.value) == expected(root, path)


def _net_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    net = tiny_net(20, decoder_width=16)
    return save_framework(net, tmp_path / "k20.ckpt")


def test_eval_and_pseudo_labels_refuse_the_mask(broken_root, tmp_path: Path) -> None:
    root, path = broken_root
    ckpt = _net_file(tmp_path)
    common = [*VOC_DATA, f"data.data_root={root}", f"ckpt_path={ckpt}", "device=cpu"]
    with pytest.raises(ImageReadError) as e:
        evaluate(compose_config("eval", [*common, "eval=ss"], tmp_path / "eval"))
    assert str(e.value) == expected(root, path)
    with pytest.raises(ImageReadError) as e:
        export_pseudo_labels(compose_config("export_labels", [*common, "split=val", "cam.par_iters=1", "cam.scales=[1.0]",
                                                        "cam.cam_layers=2", f"out_dir={tmp_path / 'pl'}"], tmp_path / "pl_run"))
    assert str(e.value) == expected(root, path)


def test_validation_inside_training_refuses_the_mask(broken_root, tmp_path: Path) -> None:
    root, path = broken_root
    overrides = [
        *VOC_DATA, f"data.data_root={root}", "data.crop_size=32", "data.global_batch_size=2",
        "data.train_transform=plain", "net=tiny", "net.embed_dim=32", "net.depth=2", "net.num_heads=2",
        "cam.cam_layers=2", "net.pos_grid=2", "net.decoder_width=16", "trainer=cpu", "trainer.max_epochs=1",
        "trainer.limit_train_batches=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "logger=none", "callbacks=none", "cam.par_iters=1", "cam.scales=[1.0]", "model.seg_start_epoch=0",
    ]
    cfg = compose_config("train", overrides, tmp_path / "run")
    with pytest.raises(ImageReadError) as e:
        train(cfg)
    assert str(e.value) == expected(root, path)
