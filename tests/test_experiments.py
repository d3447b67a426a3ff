"""Every experiment runs a few training steps (VOC / COCO on small fake prepared trees)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from clustercam_pl.data.synthetic import write_folder_dataset
from clustercam_pl.prepare import main as prepare
from clustercam_pl.train import train
from helpers import CONF_DIR, compose_train

sys.path.insert(0, str(Path(__file__).parent / "data"))
from wsss_fakes import make_coco_tree, make_voc_tree  # noqa: E402

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
# Shrink the network and the run, keep everything else the experiment sets.
SMALL = [
    "net.embed_dim=32", "net.depth=2", "net.num_heads=2", "cam.cam_layers=2", "net.decoder_width=16",
    "model.pretrained=null", "model.seg_start_epoch=0", "trainer=cpu", "trainer.precision=32-true",
    "trainer.max_steps=2", "trainer.max_epochs=5", "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false", "logger=none", "data.num_workers=0", "cam.par_iters=2",
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prepared")
    voc = make_voc_tree(root / "raw")
    prepare(voc.argv(root / "voc"))
    coco = make_coco_tree(root / "coco_raw")
    prepare(coco.argv(root / "coco"))
    own = write_folder_dataset(root / "folder_raw", {"num_classes": 2, "num_train": 7, "num_val": 2, "num_test": 0},
                               negatives=1)
    prepare(["folder", "--images", str(own["images"]), "--labels", str(own["labels"]), "--masks", str(own["masks"]),
             "--splits", str(own["splits"]), "--out", str(root / "folder"), "--workers", "0", "--no-progress"])
    return {"voc": root / "voc", "coco": root / "coco", "folder": root / "folder"}


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_runs_a_few_steps(name, prepared, tmp_path):
    extra = ["data.synthetic.image_size=64", "data.synthetic.num_train=8", "data.synthetic.num_val=2",
             "data.global_batch_size=4"]
    crop = 56 if "dinov2" in name else 64  # a multiple of the patch (14 px for DINOv2)
    if name.startswith("voc"):
        extra = [f"data.data_root={prepared['voc']}", f"data.crop_size={crop}", "data.global_batch_size=2",
                 "data.pin_memory=false"]
    elif name.startswith("folder"):
        extra = [f"data.data_root={prepared['folder']}", "data.crop_size=64", "data.global_batch_size=4",
                 "data.pin_memory=false"]  # 7 images + 1 negative: one epoch of 2 steps, then validation
    elif name.startswith("coco"):
        extra = [f"data.data_root={prepared['coco']}", "data.crop_size=64", "data.global_batch_size=2",
                 "data.pin_memory=false"]
    if not name.startswith(("synthetic", "folder")):
        extra.append("trainer.limit_val_batches=0")  # the fake trees' images are smaller than a cluster cell
    summary = train(compose_train([f"+experiment={name}", *SMALL, *extra], output_dir=tmp_path))
    assert summary["global_step"] == 2
    if name.startswith(("synthetic", "folder")):
        assert 0.0 <= summary["val/seg_miou"] <= 1.0
