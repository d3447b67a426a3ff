"""`python -m clustercam_pl.prepare voc` on a fake VOC + SBD tree, then every split through the datamodule."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from wsss_fakes import write_palette_png

from clustercam_pl.data.datamodule import WSSSDataModule
from clustercam_pl.data.imageio import read_mask
from clustercam_pl.data.labels import VOC_CLASSES, read_label_file, write_label_file
from clustercam_pl.data.layout import MANIFEST_NAME
from clustercam_pl.data.prepare_common import REPORT_NAME, PrepareError
from clustercam_pl.prepare import cli, main

pytestmark = pytest.mark.filterwarnings("error::UserWarning")


def _dm(root: Path, **kw) -> WSSSDataModule:
    args = dict(dataset="voc", data_root=str(root), global_batch_size=2, crop_size=32, num_workers=0)
    args.update(kw)
    return WSSSDataModule(**args)


@pytest.fixture
def prepared(voc_tree, tmp_path: Path):
    out = tmp_path / "voc"
    main(voc_tree.argv(out, "--workers", "2"))  # the process-pool path
    return voc_tree, out


def test_voc_splits_labels_and_masks(prepared) -> None:
    tree, out = prepared
    for split, ids in tree.splits.items():
        assert (out / "splits" / f"{split}.txt").read_text().split() == sorted(ids) or split == "test"
    assert (out / "splits" / "test.txt").read_text().split() == tree.splits["test"]
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["images_per_split"] == {"train": 3, "val": 2, "train_aug": 5, "test": 2}
    assert report["images_per_class"]["train_aug"]["person"] == 1  # 2007_000001 (2007_000010 is val)
    assert report["xml_vs_mask_label_mismatches"]["train"] == 1  # the unseen 'dog' of 2007_000002
    xml = read_label_file(out / "cls_labels_xml.json", 20, VOC_CLASSES)
    masks = read_label_file(out / "cls_labels_mask.json", 20, VOC_CLASSES)
    for i in tree.splits["train_aug"] + tree.splits["val"]:
        assert xml[i] == tree.xml_labels[i]
        assert masks[i] == tree.mask_labels[i]
        written = read_mask(out / "SegmentationClassAug" / f"{i}.png")
        np.testing.assert_array_equal(written, tree.masks[i])  # VOC mask wins over SBD for VOC ids
    assert 255 in read_mask(out / "SegmentationClassAug" / "2007_000010.png")  # VOC boundary kept
    assert Image.open(out / "SegmentationClassAug" / "2008_000001.png").mode == "P"


def test_voc_every_split_through_datamodule(prepared) -> None:
    tree, out = prepared
    dm = _dm(out, val_batch_size=2, test_split="test")
    dm.setup("fit")
    assert dm.num_classes == 20 and dm.batch_size == 2
    seen = []
    for batch in dm.train_dataloader():
        assert batch["image"].shape == (2, 3, 32, 32) and batch["image"].dtype == torch.float32
        assert "mask" not in batch  # training never sees a pixel label
        for i, lab in zip(batch["image_id"], batch["cls_label"], strict=True):
            assert torch.nonzero(lab).flatten().tolist() == tree.xml_labels[i]
        seen += batch["image_id"]
    assert len(seen) == 4 and set(seen) <= set(tree.splits["train_aug"])  # 5 images, drop_last
    for batch in dm.val_dataloader():
        for b, i in enumerate(batch["image_id"]):
            h, w = batch["image_size"][b].tolist()
            mask = batch["mask"][b]
            np.testing.assert_array_equal(mask[:h, :w].numpy(), tree.masks[i])
            assert (mask[h:] == 255).all() and (mask[:, w:] == 255).all()  # padding is ignored
            assert (batch["image"][b, :, h:] == 0).all()
            in_mask = sorted({int(v) - 1 for v in mask.unique() if 0 < v < 255})
            label = torch.nonzero(batch["cls_label"][b]).flatten().tolist()
            assert set(in_mask) <= set(label)  # XML labels cover the mask classes
    dm.setup("test")
    test = list(dm.test_dataloader())
    assert [i for b in test for i in b["image_id"]] == tree.splits["test"]
    assert all("mask" not in b and b["cls_label"].sum() == 0 for b in test)
    # label_source="mask": labels equal the classes in the mask exactly.
    dm = _dm(out, label_source="mask", train_split="train")
    dm.setup("fit")
    for item in dm.val_dataset:
        in_mask = sorted({int(v) - 1 for v in item["mask"].unique() if 0 < v < 255})
        assert torch.nonzero(item["cls_label"]).flatten().tolist() == in_mask


def test_voc_aug_root_gives_same_train_aug(prepared, tmp_path: Path) -> None:
    tree, out = prepared
    out2 = tmp_path / "voc2"
    main(
        [
            "voc",
            "--voc-root",
            str(tree.voc),
            "--aug-root",
            str(out / "SegmentationClassAug"),
            "--out",
            str(out2),
            "--workers",
            "0",
            "--no-progress",
        ]
    )
    assert (out2 / "splits" / "train_aug.txt").read_text() == (out / "splits" / "train_aug.txt").read_text()
    assert not (out2 / "splits" / "test.txt").exists()


def _break(tree, kind: str) -> tuple[str, str]:
    """Damage one item of the fake tree; returns (image id, text the error must contain)."""
    voc = tree.voc
    if kind == "corrupt_jpeg":
        (voc / "JPEGImages" / "2007_000002.jpg").write_bytes(b"this is not a jpeg")
        return "2007_000002", "2007_000002.jpg"
    if kind == "truncated_jpeg":
        p = voc / "JPEGImages" / "2007_000003.jpg"
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        return "2007_000003", "2007_000003.jpg"
    if kind == "truncated_png":
        p = voc / "SegmentationClass" / "2007_000011.png"
        p.write_bytes(p.read_bytes()[:60])
        return "2007_000011", "2007_000011.png"
    if kind == "wrong_mask_size":
        p = voc / "SegmentationClass" / "2007_000001.png"
        write_palette_png(p, np.zeros((10, 12), np.uint8))
        return "2007_000001", "mask size 12x10 != image 48x40"
    if kind == "mask_value":
        m = tree.masks["2007_000010"].copy()
        m[0, 0] = 50
        write_palette_png(voc / "SegmentationClass" / "2007_000010.png", m)
        return "2007_000010", r"mask values \[50\] outside"
    if kind == "missing_image":
        (voc / "JPEGImages" / "2008_000002.jpg").unlink()
        return "2008_000002", "missing file.*2008_000002.jpg"
    if kind == "missing_mask":
        (tree.sbd / "cls" / "2008_000001.mat").unlink()
        return "2008_000001", "no mask found"
    if kind == "unknown_class":
        (voc / "Annotations" / "2007_000011.xml").write_text(
            "<annotation><object><name>unicorn</name></object></annotation>"
        )
        return "2007_000011", "unknown class 'unicorn'"
    raise AssertionError(kind)


BAD_KINDS = [
    "corrupt_jpeg",
    "truncated_jpeg",
    "truncated_png",
    "wrong_mask_size",
    "mask_value",
    "missing_image",
    "missing_mask",
    "unknown_class",
]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_voc_bad_item_is_refused_then_skipped(voc_tree, tmp_path: Path, kind: str) -> None:
    image_id, text = _break(voc_tree, kind)
    out = tmp_path / "voc"
    with pytest.raises(PrepareError, match=rf"(?s)1 bad item.*{image_id}.*{text}"):
        main(voc_tree.argv(out))
    assert not (out / MANIFEST_NAME).exists()  # a refused run leaves no usable root
    main(voc_tree.argv(out, "--skip-bad"))
    report = json.loads((out / REPORT_NAME).read_text())
    assert [s["image_id"] for s in report["skipped"]] == [image_id]
    for split in ("train_aug", "train", "val"):
        assert image_id not in (out / "splits" / f"{split}.txt").read_text().split()
    total = sum(len(v) for k, v in voc_tree.splits.items() if k != "test")
    assert sum(report["images_per_split"][k] for k in ("train_aug", "train", "val")) == total - (
        2 if image_id in voc_tree.splits["train"] else 1
    )


def test_voc_missing_split_list(voc_tree, tmp_path: Path) -> None:
    (voc_tree.voc / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"VOC split list not found: .*Segmentation/val\.txt"):
        main(voc_tree.argv(tmp_path / "out"))
    assert cli(voc_tree.argv(tmp_path / "out")) == 1  # the shell entry prints and exits 1


def test_voc_split_not_prepared(voc_tree, tmp_path: Path) -> None:
    out = tmp_path / "voc"
    main(["voc", "--voc-root", str(voc_tree.voc), "--out", str(out), "--workers", "0", "--no-progress"])
    with pytest.raises(ValueError, match=r"split 'train_aug' is not prepared.*prepare voc"):
        _dm(out).setup("fit")
    with pytest.raises(ValueError, match="split 'test' is not prepared"):
        _dm(out, train_split="train", test_split="test").setup("test")


def test_voc_empty_training_label(voc_tree, tmp_path: Path) -> None:
    m = np.zeros_like(voc_tree.masks["2007_000003"])  # only background: no class from the mask
    write_palette_png(voc_tree.voc / "SegmentationClass" / "2007_000003.png", m)
    out = tmp_path / "voc"
    with pytest.raises(PrepareError, match="2007_000003: empty label vector in a training split"):
        main(voc_tree.argv(out, "--labels-from", "mask"))
    main(voc_tree.argv(out))  # XML labels still name the object: fine
    # An empty label in the label file is caught again when the datamodule loads the training split.
    labels = read_label_file(out / "cls_labels_mask.json", 20)
    assert labels["2007_000003"] == []
    dm = _dm(out, label_source="mask")
    with pytest.raises(ValueError, match=r"empty label.*2007_000003"):
        dm.setup("fit")
    dm = _dm(out, label_source="mask", skip_unlabeled=True)
    dm.setup("fit")
    assert "2007_000003" not in dm.train_dataset.ids and len(dm.train_dataset) == 4


def test_voc_label_file_for_wrong_classes(prepared, tmp_path: Path) -> None:
    _, out = prepared
    bad = tmp_path / "labels_81.json"
    write_label_file(bad, {"2007_000001": [0]}, [f"c{i}" for i in range(81)], "test")
    with pytest.raises(ValueError, match=r"labels_81\.json was written for num_classes=81.*20 classes"):
        _dm(out, label_source=str(bad)).setup("fit")
    partial = tmp_path / "partial.json"
    write_label_file(partial, {"2007_000001": [0]}, VOC_CLASSES, "test")
    with pytest.raises(ValueError, match=r"partial\.json.*have no entry: .*2007_000002"):
        _dm(out, label_source=str(partial)).setup("fit")


def test_voc_missing_or_half_prepared_root(prepared, tmp_path: Path, monkeypatch) -> None:
    _, out = prepared
    with pytest.raises(FileNotFoundError, match=r"nowhere does not exist.*-m clustercam_pl\.prepare voc"):
        _dm(tmp_path / "nowhere").setup("fit")
    monkeypatch.delenv("CLUSTERCAM_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match=r"CLUSTERCAM_DATA.*prepare voc"):
        WSSSDataModule(dataset="voc").setup("fit")
    monkeypatch.setenv("CLUSTERCAM_DATA", str(out.parent))  # $CLUSTERCAM_DATA/voc is the prepared root
    WSSSDataModule(dataset="voc", crop_size=32, global_batch_size=2).setup("fit")
    (out / "SegmentationClassAug" / "2007_000011.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"split 'val'.*2007_000011\.png.*prepare voc"):
        _dm(out).setup("validate")
    (out / MANIFEST_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=rf"{MANIFEST_NAME} not found.*did not finish.*prepare voc"):
        _dm(out).setup("fit")


def test_import_reference_npy(prepared, tmp_path: Path) -> None:
    tree, out = prepared
    ref = {i: np.eye(20, dtype=np.float32)[tree.mask_labels[i]].sum(0) for i in tree.splits["train_aug"]}
    ref.update({i: np.eye(20, dtype=np.float32)[tree.mask_labels[i]].sum(0) for i in tree.splits["val"]})
    npy = tmp_path / "cls_labels.npy"
    with open(npy, "wb") as f:
        np.save(f, np.array(ref, dtype=object), allow_pickle=True)
    dst = tmp_path / "ref.json"
    with pytest.raises(ValueError, match="allow-pickle"):
        main(["import-labels", "--npy", str(npy), "--dataset", "voc", "--out", str(dst)])
    with pytest.warns(UserWarning, match="unpickling"):
        main(["import-labels", "--npy", str(npy), "--dataset", "voc", "--out", str(dst), "--allow-pickle"])
    assert read_label_file(dst, 20) == {i: tree.mask_labels[i] for i in ref}
    dm = _dm(out, label_source=str(dst))
    dm.setup("fit")
    assert dm.train_dataset.labels["2007_000002"] == tree.mask_labels["2007_000002"]


def test_skip_unlabeled_is_logged(prepared, tmp_path: Path, caplog) -> None:
    _, out = prepared
    labels = read_label_file(out / "cls_labels_xml.json", 20)
    labels["2008_000001"] = []
    f = tmp_path / "one_empty.json"
    write_label_file(f, labels, VOC_CLASSES, "edited")
    with caplog.at_level(logging.WARNING):
        _dm(out, label_source=str(f), skip_unlabeled=True).setup("fit")
    assert "2008_000001" in caplog.text and "skipped" in caplog.text
