"""Own data end to end: negatives and K = 1 through pseudo labels and losses, the folder experiments'
warm-up, and the synthetic set written as a folder, prepared, trained (folder_tiny), evaluated and
turned into pseudo labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra import compose
from omegaconf import open_dict
from PIL import Image

import clustercam_pl.entry  # noqa: F401  (registers the round_mul resolver, as every entry point does)
from clustercam_pl.cam.config import CAMConfig
from clustercam_pl.cam.generate import pseudo_label_step
from clustercam_pl.cam.par import PAR
from clustercam_pl.cam.refine import refine_with_background
from clustercam_pl.data.prepare_common import REPORT_NAME
from clustercam_pl.data.synthetic import SyntheticConfig, class_names, write_folder_dataset
from clustercam_pl.eval import evaluate
from clustercam_pl.export_labels import export_pseudo_labels
from clustercam_pl.losses import clustercam_losses, seg_loss
from clustercam_pl.prepare import main as prepare
from clustercam_pl.train import train
from helpers import compose_eval, compose_train, hydra_config, tiny_net


# ------------------------------------------------------------------- negatives and K = 1, unit level
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("compact", [True, False])
def test_pseudo_label_of_a_negative_image_is_all_background(k, compact):
    g = torch.Generator().manual_seed(k)
    image01 = torch.rand(3, 3, 24, 28, generator=g)  # (B, 3, H, W)
    cls_label = torch.zeros(3, k)
    cls_label[0] = 1.0  # every class present
    cls_label[2, 0] = 1.0  # image 1 is a negative
    cams = torch.rand(3, k, 24, 28, generator=g) * cls_label[:, :, None, None]  # (B, K, H, W), label-masked
    cams[:, :, 4:12, 4:12] = 0.95 * cls_label[:, :, None, None]  # a confident object in the positives
    par = PAR(dilations=(1, 2), num_iter=3)
    label = refine_with_background(par, image01, cams, cls_label, compact=compact)  # (B, H, W)
    assert (label[1] == 0).all()
    for b in (0, 2):
        assert (label[b, 6:10, 6:10] > 0).all() and (label[b] != 255).any()
    alone = refine_with_background(par, image01[1:2], cams[1:2], cls_label[1:2], compact=compact)  # a batch of negatives
    assert (alone == 0).all()


def test_losses_of_negatives_and_one_class_are_finite_with_gradients():
    torch.manual_seed(0)
    cls_logits = torch.randn(2, 1, requires_grad=True)  # (B, K=1)
    patch_logits = torch.randn(2, 1, requires_grad=True)
    seg_logits = torch.randn(2, 2, 8, 8, requires_grad=True)  # (B, K + 1, h, w)
    cls_label = torch.tensor([[0.0], [1.0]])  # a negative and a positive
    pseudo = torch.zeros(2, 16, 16, dtype=torch.long)
    pseudo[1, 4:12, 4:12] = 1
    losses = clustercam_losses(cls_logits, patch_logits, seg_logits, cls_label, pseudo)
    losses["total"].backward()
    for t in (cls_logits, patch_logits, seg_logits):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    # All-negative batch: no foreground pixel, the seg loss is half the background cross-entropy.
    up = torch.nn.functional.interpolate(seg_logits.detach(), size=(16, 16), mode="bilinear", align_corners=False)
    bg_only = seg_loss(up, torch.zeros(2, 16, 16, dtype=torch.long))
    expected = 0.5 * torch.nn.functional.cross_entropy(up, torch.zeros(2, 16, 16, dtype=torch.long))
    assert torch.isclose(bg_only, expected)


def test_network_pseudo_labels_with_one_class_and_a_negative():
    torch.manual_seed(0)
    net = tiny_net(1, decoder_width=16).eval()
    images = torch.randn(2, 3, 64, 64)
    cls_label = torch.tensor([[1.0], [0.0]])
    cams, pseudo = pseudo_label_step(net, PAR(dilations=(1, 2), num_iter=2), CAMConfig(cam_layers=2, scales=(1.0,)),
                                     images, cls_label)
    assert cams.shape == (2, 1, 64, 64) and pseudo.shape == (2, 64, 64)
    assert (cams[1] == 0).all() and (pseudo[1] == 0).all()
    assert torch.isfinite(cams).all()


# ------------------------------------------------------------------------------ experiment configs
@pytest.mark.parametrize("name,epochs,start", [("folder_vits", None, 50), ("folder_vits", 40, 25),
                                               ("folder_tiny", None, 5), ("folder_tiny", 3, 2)])
def test_seg_warm_up_is_a_fraction_of_the_run(name, epochs, start, tmp_path):
    over = [f"+experiment={name}"] + ([f"trainer.max_epochs={epochs}"] if epochs else [])
    cfg = compose_train(over, output_dir=tmp_path)
    assert cfg.model.seg_start_epoch == start
    assert cfg.data.dataset == "folder" and cfg.data.use_negatives is True


# ------------------------------------------------------------------------- end to end (slow)
SMALL = ["logger=none", "net.embed_dim=32", "net.num_heads=2", "net.decoder_width=16", "data.global_batch_size=4",
         "cam.par_iters=2", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
         "trainer.enable_model_summary=false"]


@pytest.mark.slow
@pytest.mark.parametrize("k,negatives", [(3, {"train": 2, "val": 1}), (1, {"train": 4, "val": 2})])
def test_folder_dataset_trains_and_evaluates(k, negatives, tmp_path):
    cfg = SyntheticConfig(num_classes=k, image_size=64, num_train=10, num_val=4, num_test=0, class_colours=True)
    raw = write_folder_dataset(tmp_path / "raw", cfg, negatives=negatives)
    root = tmp_path / "prepared"
    prepare(["folder", "--images", str(raw["images"]), "--labels", str(raw["labels"]), "--classes",
             str(raw["classes"]), "--masks", str(raw["masks"]), "--val-fraction", "0.3", "--out", str(root),
             "--workers", "0", "--no-progress"])
    report = json.loads((root / REPORT_NAME).read_text())
    assert sum(report["negatives_per_split"].values()) == sum(negatives.values())

    data = [f"data.data_root={root}", "data.num_workers=0", "data.pin_memory=false"]
    run = tmp_path / "train"
    summary = train(compose_train(["+experiment=folder_tiny", *SMALL, *data], output_dir=run))
    n_train = report["images_per_split"]["train"]
    assert summary["global_step"] == 2 * (n_train // 4)  # negatives are trained on
    if k == 1:  # here leaving the negatives out would make fewer batches
        assert (n_train - report["negatives_per_split"]["train"]) // 4 < n_train // 4
    assert 0.0 <= summary["val/seg_miou"] <= 1.0 and 0.0 <= summary["val/pseudo_miou"] <= 1.0
    names = ["background", *class_names(k)]
    assert list(summary["per_class_iou"]) == names

    result = evaluate(compose_eval(["data=folder", *data, f"ckpt_path={run}", "eval=ss", "device=cpu"],
                                   tmp_path / "eval"))
    assert result["dataset"] == "folder" and result["num_images"] == report["images_per_split"]["val"]
    assert list(result["per_class_iou"]) == names
    # The single-scale decoder mIoU of eval is the one the training run logged on the same val images.
    last = next(r for r in result["checkpoints"] if r["path"] == result["last"]["path"])
    assert last["miou"] == pytest.approx(summary["val/seg_miou"], abs=1e-6)

    # Pseudo labels of the training split: ids are paths (train/000000), negatives are all background.
    with hydra_config():
        pcfg = compose("export_labels", overrides=["data=folder", *data, f"ckpt_path={run / 'checkpoints/last.ckpt'}",
                                                   f"out_dir={tmp_path / 'pl'}", "device=cpu", "cam.par_iters=2"])
    with open_dict(pcfg):
        pcfg.paths.output_dir = str(tmp_path / "pl_run")
    export_pseudo_labels(pcfg)
    train_ids = (root / "splits/train.txt").read_text().split()
    negative = [i for i in train_ids if "negative" in i]
    assert negative and all((tmp_path / "pl/labels" / f"{i}.png").is_file() for i in train_ids)
    for i in negative:
        assert not np.asarray(Image.open(tmp_path / "pl/labels" / f"{i}.png")).any()

    # The trained model on the raw image files (no preparation): names from the checkpoint, masks of the inputs' size.
    from clustercam_pl.tasks.evaluate import Protocol
    from clustercam_pl.tasks.predict import predict_images

    files = sorted(p for p in raw["images"].rglob("*.png"))[:3]
    pred = predict_images(run, [str(f) for f in files], tmp_path / "pred", Protocol.from_values("ss", [1.0], False, None),
                          torch.device("cpu"), progress=False)
    assert pred["predicted"] == 3 and not pred["failed"] and pred["class_names"] == list(class_names(k))
    lines = [json.loads(line) for line in (tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(len(line["scores"]) == k for line in lines)
    for f in files:
        mask = next((tmp_path / "pred").rglob(f"{f.stem}.png"))
        assert Image.open(mask).size == Image.open(f).size
