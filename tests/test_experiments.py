"""Every experiment of conf/experiment builds and learns (VOC / COCO on small fake prepared trees).

One experiment per data path trains a few steps through `train` (data module, Trainer, validation,
checkpoints); the others differ from it only in settings (network preset, cluster blocks, recipe), so
their composed config is built and takes one forward / backward step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from wsss_fakes import make_coco_tree, make_histo_release, make_voc_tree

from clustercam_pl.data.imageio import write_index_png
from clustercam_pl.data.synthetic import write_folder_dataset
from clustercam_pl.prepare import main as prepare
from clustercam_pl.train import train
from helpers import CONF_DIR, TINY_NET_OVERRIDES, compose_train, one_training_step
from isprs_fakes import TRAIN_TILES, VAL_TILES, make_potsdam_tree

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
# The experiment trained for each data path (data.dataset): the others on that path take one step.
TRAINED = {"bcss": "bcss_vits", "coco": "coco_vits", "folder": "folder_vits", "luad": "luad_vits",
           "potsdam": "potsdam_vits", "synthetic": "synthetic", "voc": "voc_vits"}
# The data paths whose stand-ins are large enough to validate on (the fake VOC / COCO trees' images are not).
VALIDATED = ("synthetic", "folder", "luad", "bcss", "potsdam")
# Shrink the network and the run, keep everything else the experiment sets.
SMALL = [
    *TINY_NET_OVERRIDES,
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
    for histo in ("luad", "bcss"):  # stand-ins of the releases: 8 tagged patches, 2 + 2 with masks (64 px)
        prepare(make_histo_release(root / f"{histo}_raw", histo, size=64).argv(root / histo))
    potsdam = make_potsdam_tree(root / "potsdam_raw", side=128)
    prepare(["potsdam", "--root", str(potsdam.root), "--patch-size", "64", "--stride", "32", "--train-tiles", *TRAIN_TILES,
             "--val-tiles", *VAL_TILES, "--out", str(root / "potsdam"), "--workers", "0", "--no-progress"])
    return {"voc": root / "voc", "coco": root / "coco", "folder": root / "folder", "luad": root / "luad",
            "bcss": root / "bcss", "potsdam": root / "potsdam"}


def small_config(name: str, prepared: dict[str, Path], out: Path):
    """Experiment `name` at test size, on the synthetic set or the fake prepared tree of its data path."""
    extra = ["data.synthetic.image_size=64", "data.synthetic.num_train=8", "data.synthetic.num_val=2",
             "data.global_batch_size=4"]
    crop = 56 if "dinov2" in name else 64  # a multiple of the patch (14 px for DINOv2)
    if name.startswith("voc"):
        extra = [f"data.data_root={prepared['voc']}", f"data.crop_size={crop}", "data.global_batch_size=2",
                 "data.pin_memory=false"]
    elif name.startswith("folder"):
        extra = [f"data.data_root={prepared['folder']}", "data.crop_size=64", "data.global_batch_size=4",
                 "data.pin_memory=false"]  # 7 images + 1 negative: one epoch of 2 steps, then validation
    elif name.startswith(("luad", "bcss")):  # 8 patches: one epoch of 2 steps, then validation on 2 patches
        extra = [f"data.data_root={prepared[name.split('_')[0]]}", "data.crop_size=64", "data.global_batch_size=4",
                 "data.pin_memory=false"]
    elif name.startswith("potsdam"):  # 18 training patches of 64 px, 4 bands: one epoch of 2 steps, then validation
        extra = [f"data.data_root={prepared['potsdam']}", "data.crop_size=64", "data.global_batch_size=9",
                 "data.val_batch_size=3", "data.pin_memory=false"]
    elif name.startswith("coco"):
        extra = [f"data.data_root={prepared['coco']}", "data.crop_size=64", "data.global_batch_size=2",
                 "data.pin_memory=false"]
    if not name.startswith(VALIDATED):
        extra.append("trainer.limit_val_batches=0")  # the fake trees' images are smaller than a cluster cell
    if name.endswith("_stage2"):  # fixed labels of the training split; the network from ImageNet / random
        base = compose_train([f"+experiment={name}", *SMALL, *extra, "data.label_dir=null"])
        extra += [f"data.label_dir={stage2_labels(base, out / 'labels')}", "model.init_from=null"]
    return compose_train([f"+experiment={name}", *SMALL, *extra], output_dir=out)


def stage2_labels(cfg, folder: Path) -> Path:
    """A label PNG per training image of `cfg`'s data (class 1 in the middle, the rest background)."""
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    source = datamodule.train_dataset
    folder.mkdir(parents=True)
    for i in range(len(source)):
        h, w = source.image_hw(i)
        label = np.zeros((h, w), np.uint8)  # (H, W)
        label[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1
        write_index_png(folder / f"{source.item_id(i)}.png", label)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("dataset, name", TRAINED.items())
def test_experiment_trains_a_few_steps(dataset, name, prepared, tmp_path):
    cfg = small_config(name, prepared, tmp_path)
    assert cfg.data.dataset == dataset
    summary = train(cfg)
    assert summary["global_step"] == 2
    if name.startswith(VALIDATED):
        assert 0.0 <= summary["val/seg_miou"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in EXPERIMENTS if name not in TRAINED.values()])
def test_experiment_takes_a_training_step(name, prepared, tmp_path):
    cfg = small_config(name, prepared, tmp_path)
    assert cfg.data.dataset in TRAINED, f"{name}: add one experiment of data.dataset={cfg.data.dataset} to TRAINED"
    module, loss = one_training_step(cfg)
    assert torch.isfinite(loss) and loss > 0
    unused = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"{name}: no gradient reached {unused}"
    for n, p in module.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), n
