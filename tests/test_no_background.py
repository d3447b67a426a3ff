"""Data without a background class (histopathology, remote sensing): class c = label value c, K label values.

The pseudo label by hand, the decoder / loss / metric sizes of both conventions, old checkpoints loading
as background=True, the per-root and per-config fact, and (slow) a whole train -> eval -> predict ->
export_labels -> audit run on the synthetic set with ``data.synthetic.background=false``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose
from PIL import Image

from clustercam_pl.cam.config import CAMConfig
from clustercam_pl.cam.generate import pseudo_label_step
from clustercam_pl.cam.par import PAR
from clustercam_pl.cam.refine import refine_without_background
from clustercam_pl.checkpoint import load_checkpoint
from clustercam_pl.data.datamodule import WSSSDataModule
from clustercam_pl.data.folder import FolderSegmentation
from clustercam_pl.data.imageio import voc_colours, write_index_png
from clustercam_pl.data.labels import (
    IGNORE_INDEX,
    label_names,
    mask_classes,
    mask_values_outside,
    num_labels,
    write_label_file,
)
from clustercam_pl.data.layout import MANIFEST_NAME, Manifest, SplitInfo, write_manifest
from clustercam_pl.data.synthetic import SyntheticConfig, SyntheticWSSS, class_names, make_sample
from clustercam_pl.inference.network import cam_prediction
from clustercam_pl.lit_module import ClusterCAMLitModule
from clustercam_pl.losses import LossConfig, seg_loss
from clustercam_pl.models.smp_net import SmpConfig, SmpSegNet
from clustercam_pl.optim import OptimConfig
from clustercam_pl.visualize import overlay_image
from helpers import (
    TINY_OVERRIDES,
    compose_config,
    compose_eval,
    compose_train,
    hydra_config,
    save_framework_checkpoint,
    tiny_net,
)

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ the pseudo label
def test_pseudo_label_by_hand_without_par():
    """PAR without iterations and down_scale 1 are the identity: the label is the argmax among the present
    classes, whatever an absent class scores; every pixel gets a class, none is 255."""
    cams = torch.zeros(1, 3, 4, 4)
    cams[0, 0] = torch.tensor([[0.9, 0.8, 0.1, 0.0], [0.7, 0.6, 0.2, 0.1], [0.2, 0.3, 0.4, 0.5], [0.0, 0.0, 0.0, 0.0]])
    cams[0, 1] = 1.0  # absent: the largest everywhere, never chosen
    cams[0, 2] = torch.tensor([[0.1, 0.2, 0.8, 0.9], [0.2, 0.3, 0.6, 0.7], [0.3, 0.2, 0.5, 0.4], [0.0, 0.0, 0.0, 0.0]])
    expected = torch.tensor([[0, 0, 2, 2], [0, 0, 2, 2], [2, 0, 2, 0], [0, 0, 0, 0]])  # ties (last row): the first
    label = torch.tensor([[1.0, 0.0, 1.0]])
    image = torch.rand(1, 3, 4, 4)
    pseudo = refine_without_background(PAR(dilations=(1,), num_iter=0), image, cams, label, down_scale=1)
    assert pseudo.dtype == torch.int64 and pseudo.shape == (1, 4, 4)
    assert torch.equal(pseudo[0], expected)


def test_pseudo_label_with_par_keeps_to_present_classes():
    """With PAR and down-scaling: only present classes, no void, and a strongly separated image keeps
    each class's half."""
    torch.manual_seed(0)
    cams = torch.zeros(2, 3, 8, 8)
    cams[:, 0, :, :4], cams[:, 2, :, 4:] = 0.9, 0.9  # left half class 0, right half class 2
    cams[:, 1] = 5.0  # absent in image 0, present in image 1
    image = torch.zeros(2, 3, 8, 8)
    image[:, :, :, 4:] = 1.0  # an edge between the halves
    label = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    pseudo = refine_without_background(PAR(dilations=(1, 2), num_iter=3), image, cams, label, down_scale=2)
    assert not (pseudo == IGNORE_INDEX).any()
    assert torch.equal(pseudo[0, :, :3], torch.zeros(8, 3, dtype=torch.long))
    assert torch.equal(pseudo[0, :, 5:], torch.full((8, 3), 2))
    assert set(pseudo[0].unique().tolist()) <= {0, 2}
    assert torch.equal(pseudo[1], torch.ones(8, 8, dtype=torch.long))  # present and highest everywhere


def test_an_image_without_a_class_is_refused():
    cams, image = torch.rand(2, 2, 4, 4), torch.rand(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"image\(s\) \[1\] of the batch have no class.*use_negatives=false"):
        refine_without_background(PAR(num_iter=0), image, cams, torch.tensor([[1.0, 0.0], [0.0, 0.0]]))


def test_pseudo_label_step_follows_the_network():
    """The step chooses by `net.cfg.background`: labels 0..K-1 without void, or the background version's."""
    cfg = CAMConfig(cam_layers=2, scales=(1.0,), par_iters=2, par_dilations=(1, 2))
    image, label = torch.randn(2, 3, 32, 32), torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    par = PAR(dilations=cfg.par_dilations, num_iter=cfg.par_iters)
    _, without = pseudo_label_step(tiny_net(3, background=False).eval(), par, cfg, image, label)
    assert without.shape == (2, 32, 32) and not (without == IGNORE_INDEX).any()
    assert set(without[0].unique().tolist()) <= {0, 2} and set(without[1].unique().tolist()) == {1}
    _, with_bg = pseudo_label_step(tiny_net(3).eval(), par, cfg, image, label)
    assert set(with_bg.unique().tolist()) <= {0, 1, 2, 3, IGNORE_INDEX}


def test_cam_prediction_without_background_never_picks_an_absent_class():
    cams = torch.zeros(3, 2, 2)  # label-masked: 0 where absent, and a present class may be 0 too
    cams[2] = torch.tensor([[0.5, 0.0], [0.2, 0.0]])
    pred = cam_prediction(cams, None, torch.tensor([0.0, 0.0, 1.0]))
    assert torch.equal(pred, torch.full((2, 2), 2))
    assert torch.equal(cam_prediction(cams, 0.3), torch.tensor([[3, 0], [0, 0]]))  # with background: unchanged


# ------------------------------------------------------------------------ sizes of both conventions
@pytest.mark.parametrize("background, labels", [(True, 4), (False, 3)])
def test_decoder_loss_and_metric_sizes(background, labels):
    net = tiny_net(3, background=background)
    assert net.cfg.num_labels == labels == num_labels(3, background)
    assert net.decoder.conv8.out_channels == labels
    assert net(torch.randn(1, 3, 32, 32)).seg_logits.shape[1] == labels
    module = ClusterCAMLitModule(net, CAMConfig(cam_layers=2), LossConfig(), OptimConfig())
    for metric in (module.val_seg, module.val_pseudo, module.val_cam):
        assert metric.confmat.shape == (labels, labels)
    assert label_names(["a", "b", "c"], background) == (["background", "a", "b", "c"] if background else ["a", "b", "c"])


def test_seg_loss_without_background_is_the_plain_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 5)
    label = torch.randint(0, 3, (2, 5, 5))
    label[0, :2] = IGNORE_INDEX
    plain = F.cross_entropy(logits, label, ignore_index=IGNORE_INDEX)  # mean over the labelled pixels
    assert seg_loss(logits, label, background=False) == pytest.approx(float(plain), rel=1e-6)
    assert seg_loss(logits, label) != pytest.approx(float(plain), rel=1e-3)  # the balanced one differs
    assert float(seg_loss(logits, torch.full_like(label, IGNORE_INDEX), background=False)) == 0.0


def test_smp_network_predicts_k_label_values_without_background():
    net = SmpSegNet(SmpConfig(num_classes=3, arch="Unet", encoder_name="resnet18", background=False)).eval()
    out = net(torch.randn(1, 3, 32, 32))
    assert out.seg_logits.shape == (1, 3, 32, 32) and out.cls_logits.shape == (1, 3)
    probs = out.seg_logits.softmax(1).amax(dim=(2, 3))  # every channel is a class
    assert torch.allclose(out.cls_logits, torch.logit(probs, eps=1e-6))


def test_overlay_and_palette_show_class_0_without_background(tmp_path):
    rgb = np.full((200, 200, 3), 128, np.uint8)
    label = np.zeros((200, 200), np.uint8)
    label[100:] = 1
    label[:2, :2] = IGNORE_INDEX
    with_bg = overlay_image(rgb, label, ["a", "b"])
    without = overlay_image(rgb, label, ["a", "b"], background=False)
    top, bottom = (slice(60, 100), slice(150, None)), (slice(150, 190), slice(150, None))  # beside the legend
    assert np.array_equal(with_bg[top], rgb[top])  # background: not blended
    assert np.array_equal(without[top], with_bg[bottom])  # class 0 (value 0 / value 1): blended, one colour
    assert not np.array_equal(without[bottom], without[top])  # class 1 in its own colour
    write_index_png(tmp_path / "l.png", label, background=False)
    palette = np.array(Image.open(tmp_path / "l.png").getpalette()).reshape(-1, 3)
    assert palette[0].tolist() == voc_colours(2)[1].tolist() and palette[255].tolist() == voc_colours()[255].tolist()


# -------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_without_the_field_loads_with_background(tmp_path):
    path = save_framework_checkpoint(tiny_net(3), tmp_path / "old.ckpt")
    ckpt = torch.load(path, weights_only=True)
    del ckpt["clustercam"]["net_config"]["background"]  # as every file written before the field
    torch.save(ckpt, path)
    loaded = load_checkpoint(path)
    assert loaded.net.cfg.background is True and loaded.net.decoder.conv8.out_channels == 4
    for fixture in sorted((REPO / "tests" / "fixtures").glob("format*.ckpt")):  # formats 1 and 2
        assert load_checkpoint(fixture).net.cfg.background is True, fixture


def test_checkpoint_keeps_background_false_and_refuses_other_data(tmp_path):
    path = save_framework_checkpoint(tiny_net(3, background=False), tmp_path / "nobg.ckpt")
    loaded = load_checkpoint(path)
    assert loaded.net.cfg.background is False and loaded.net.decoder.conv8.out_channels == 3
    loaded.check_background(False, "synthetic")
    with pytest.raises(ValueError, match=r"has no background class, but data=voc has one: pass the data config"):
        loaded.check_background(True, "voc")


# ------------------------------------------------------------------------------------------ data
def test_synthetic_without_background_labels_every_pixel():
    cfg = SyntheticConfig(num_classes=3, image_size=32, background=False, num_val=4)
    for i in range(4):
        image, mask = make_sample(cfg, 0, "val", i)
        assert mask.max() < 3 and not mask_values_outside(mask, 3, background=False)
        item = SyntheticWSSS("val", cfg)[i]
        assert item["cls_label"].tolist() == [float(c in np.unique(mask)) for c in range(3)]
        assert mask_classes(mask, 3, background=False) == sorted(np.unique(mask).tolist())
    # The objects are those of the background version (same random stream until the rest is filled).
    objects = make_sample(SyntheticConfig(num_classes=3, image_size=32, num_val=4), 0, "val", 0)[1]  # 0 bg, c + 1
    assert (objects == 0).any() and (objects > 0).any()
    assert np.array_equal(make_sample(cfg, 0, "val", 0)[1][objects > 0], objects[objects > 0] - 1)
    dm = WSSSDataModule("synthetic", synthetic={"num_classes": 3, "background": False})
    assert dm.has_background is False and dm.negatives == "error"
    with pytest.raises(ValueError, match=r"data.use_negatives=true.*no background class.*use_negatives=false"):
        _ = WSSSDataModule("synthetic", synthetic={"background": False}, use_negatives=True).negatives


def _prepared_root(root: Path, has_background: bool, dataset: str = "folder", classes=("a", "b")) -> Path:
    """A prepared root by hand: two images of split val with masks and labels, the manifest last."""
    (root / "images").mkdir(parents=True)
    masks = {"x": np.array([[0, 0], [1, 1]], np.uint8), "y": np.array([[1, 1], [1, 255]], np.uint8)}
    for image_id, mask in masks.items():
        Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(root / "images" / f"{image_id}.png")
        write_index_png(root / "masks" / f"{image_id}.png", mask, background=has_background)
    (root / "splits").mkdir()
    (root / "splits" / "val.txt").write_text("x\ny\n")
    labels = {i: mask_classes(m, len(classes), has_background) for i, m in masks.items()}
    write_label_file(root / "cls_labels.json", labels, classes, source="mask")
    split = SplitInfo("val", "splits/val.txt", "images", ".png", "masks", True, 2)
    write_manifest(root, Manifest(root, dataset, tuple(classes), {"val": split}, {"mask": "cls_labels.json"}, "mask",
                                  has_background=has_background))
    return root


def test_a_prepared_root_declares_no_background_in_its_manifest(tmp_path):
    root = _prepared_root(tmp_path / "nobg", has_background=False)
    assert json.loads((root / MANIFEST_NAME).read_text())["has_background"] is False
    dm = WSSSDataModule("folder", data_root=str(root), val_split="val")
    assert dm.has_background is False and dm.negatives == "error"  # the folder kind's "keep" cannot apply
    ds = FolderSegmentation(root, "val")
    assert ds.labels == {"x": [0, 1], "y": [1]}  # class 0 is value 0
    assert ds[0]["mask"].tolist() == [[0, 0], [1, 1]]
    with_bg = _prepared_root(tmp_path / "bg", has_background=True)
    assert WSSSDataModule("folder", data_root=str(with_bg)).has_background is True
    manifest = json.loads((with_bg / MANIFEST_NAME).read_text())
    del manifest["has_background"]  # a manifest written before the key
    (with_bg / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert WSSSDataModule("folder", data_root=str(with_bg)).has_background is True


def test_a_kind_that_fixes_the_fact_refuses_another_manifest(tmp_path):
    from clustercam_pl.data.labels import VOC_CLASSES
    from clustercam_pl.data.voc import VOCSegmentation

    root = _prepared_root(tmp_path / "voc", has_background=False, dataset="voc", classes=VOC_CLASSES)
    assert VOCSegmentation.has_background_of(str(root), None) is True  # the kind's fact, not the file's
    with pytest.raises(ValueError, match=r"has_background=False, but voc data has background class"):
        VOCSegmentation(root, "val")


# ------------------------------------------------------------------------------------------ end to end
NOBG = ["data.synthetic.background=false", "data.synthetic.num_classes=3"]


@pytest.mark.slow
def test_train_eval_predict_export_audit_without_background(tmp_path):
    from clustercam_pl.audit import run_audit
    from clustercam_pl.eval import evaluate
    from clustercam_pl.export_labels import export_pseudo_labels
    from clustercam_pl.predict import run_predict
    from clustercam_pl.train import train

    names = list(class_names(3))
    summary = train(compose_train([*TINY_OVERRIDES, *NOBG], output_dir=tmp_path / "train"))
    assert list(summary["per_class_iou"]) == names  # K values, no "background"
    assert np.isfinite(summary["val/seg_miou"]) and np.isfinite(summary["val/pseudo_miou"])
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    assert load_checkpoint(ckpt).net.cfg.background is False

    data = ["data=synthetic", "data.synthetic.image_size=64", "data.synthetic.num_val=4", "data.val_batch_size=2",
            "device=cpu", *NOBG]
    result = evaluate(compose_eval([*data, f"ckpt_path={ckpt}", "eval=ss", "export=true"], tmp_path / "eval"))
    assert list(result["per_class_iou"]) == names and 0 <= result["miou"] <= 1
    pngs = [p for p in (tmp_path / "eval").rglob("*.png") if p.parent.name.endswith("_cls")]  # the exported maps
    assert len(pngs) == 4 and all(np.array(Image.open(p)).max() < 3 for p in pngs)

    syn = SyntheticConfig(num_classes=3, image_size=64, background=False, class_colours=True)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i in range(2):
        Image.fromarray(make_sample(syn, 0, "val", i)[0]).save(inputs / f"{i}.png")
    with hydra_config():
        cfg = compose("predict", overrides=["device=cpu", "progress=false", f"ckpt_path={ckpt}", f"input={inputs}",
                                            f"out_dir={tmp_path / 'pred'}"])
    run_predict(cfg)
    records = [json.loads(line) for line in (tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for r in records:
        assert set(r["scores"]) == set(names) and set(r["pixel_fraction"]) <= set(names)
        assert sum(r["pixel_fraction"].values()) == pytest.approx(1.0, abs=1e-4)  # every pixel is a class
        mask = np.array(Image.open(tmp_path / "pred" / f"{r['output']}.png"))
        assert mask.max() < 3

    out = tmp_path / "export"
    cfg = compose_config("export_labels", [*data, "cam.par_iters=2", f"ckpt_path={ckpt}", f"out_dir={out}", "split=val"],
                         tmp_path / "export_run")
    exported = export_pseudo_labels(cfg)
    assert list(exported["pseudo_miou_per_class"]) == names and exported["ignored_fraction"] == 0.0
    labels = [np.array(Image.open(p)) for p in sorted((out / "labels").glob("*.png"))]
    assert len(labels) == 4 and all(lab.max() < 3 for lab in labels)  # no 255: no ignore band

    with hydra_config():
        cfg = compose("audit", overrides=[*data, f"labels={out}", f"out_dir={tmp_path / 'audit'}"])
    report = run_audit(cfg)
    assert list(report["sets"][0]) == ["excluded"] and "cam_curve" not in report
    assert set(report["sets"][0]["excluded"]) == {*names, "mean"}
    assert report["sets"][0]["excluded"]["mean"]["iou"] == pytest.approx(exported["pseudo_miou"])
    assert "No background class" in (tmp_path / "audit" / "summary.md").read_text()
