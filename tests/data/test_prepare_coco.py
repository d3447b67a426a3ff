"""`python -m clustercam_pl.prepare coco` on a tiny COCO 2014 tree: masks, labels, resume, bad items."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from clustercam_pl.data import prepare_coco as pc
from clustercam_pl.data.datamodule import WSSSDataModule
from clustercam_pl.data.imageio import read_mask
from clustercam_pl.data.labels import COCO_CLASSES, read_label_file
from clustercam_pl.data.layout import MANIFEST_NAME
from clustercam_pl.data.prepare_common import REPORT_NAME, PrepareError
from clustercam_pl.prepare import main
from clustercam_pl.utils.files import partial_path

pytest.importorskip("pycocotools")
pytestmark = pytest.mark.filterwarnings("error::UserWarning")

PERSON, DOG, CAR, CHAIR, TOOTHBRUSH = (
    COCO_CLASSES.index(n) for n in ("person", "dog", "car", "chair", "toothbrush")
)


def _mask_path(out: Path, image_id: str) -> Path:
    return out / "SegmentationClass" / image_id.split("_")[1] / f"{image_id}.png"


def test_coco_masks_labels_and_splits(coco_tree, tmp_path: Path) -> None:
    out = tmp_path / "coco"
    main(coco_tree.argv(out))
    assert (out / "splits" / "train.txt").read_text().split() == coco_tree.train_ids
    assert (out / "splits" / "val.txt").read_text().split() == coco_tree.val_ids
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["per_split"]["train"]["images_without_annotations_dropped"] == 1
    assert not _mask_path(out, coco_tree.dropped[0]).exists()

    m = read_mask(_mask_path(out, "COCO_train2014_000000000001"))  # (40, 50)
    assert m.shape == (40, 50)
    assert m[5, 5] == PERSON + 1 and m[25, 30] == DOG + 1  # single-class pixels
    assert (m[12:18, 16:19] == 255).all()  # person/dog overlap -> ignore
    assert (m[32:38, 46:49] == 255).all()  # crowd-only region -> ignore
    assert m[5, 42] == PERSON + 1 and m[35, 10] == 0
    assert read_mask(_mask_path(out, "COCO_train2014_000000000003"))[5, 5] == TOOTHBRUSH + 1 == 80

    ann = read_label_file(out / "cls_labels_annotations.json", 80, COCO_CLASSES)
    from_mask = read_label_file(out / "cls_labels_mask.json", 80, COCO_CLASSES)
    assert ann["COCO_train2014_000000000001"] == sorted([PERSON, DOG])
    assert ann["COCO_train2014_000000000003"] == sorted([CAR, TOOTHBRUSH])  # degenerate car polygon
    assert from_mask["COCO_train2014_000000000003"] == [TOOTHBRUSH]
    assert report["annotation_vs_mask_label_mismatches"] == {"train": 1, "val": 0}
    for i in coco_tree.train_ids + coco_tree.val_ids:  # every mask class is a labelled class
        assert set(from_mask[i]) <= set(ann[i])

    dm = WSSSDataModule(
        dataset="coco",
        data_root=str(out),
        global_batch_size=3,
        crop_size=32,
        train_transform="plain",
        val_batch_size=2,
    )
    dm.setup("fit")
    assert dm.num_classes == 80
    (batch,) = list(dm.train_dataloader())
    assert batch["image"].shape == (3, 3, 32, 32) and batch["cls_label"].shape == (3, 80)
    for i, lab in zip(batch["image_id"], batch["cls_label"], strict=True):
        assert torch.nonzero(lab).flatten().tolist() == ann[i]
    (val,) = list(dm.val_dataloader())
    assert val["mask"].shape == (2, 40, 48) and val["image_size"].tolist() == [[40, 48], [28, 36]]
    assert (val["mask"][1, 28:] == 255).all() and (val["mask"][1, :, 36:] == 255).all()
    for b, i in enumerate(val["image_id"]):
        h, w = val["image_size"][b].tolist()
        np.testing.assert_array_equal(val["mask"][b, :h, :w].numpy(), read_mask(_mask_path(out, i)))


def test_coco_resume_after_interrupt(coco_tree, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "coco"
    real_write = pc.write_index_png
    calls = {"n": 0}

    def flaky_write(path, mask) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # killed while writing the third mask: only its partial file exists
            partial_path(path).write_bytes(b"half a png")
            raise KeyboardInterrupt
        real_write(path, mask)

    monkeypatch.setattr(pc, "write_index_png", flaky_write)
    with pytest.raises(KeyboardInterrupt):
        main(coco_tree.argv(out))
    done = sorted((out / "SegmentationClass" / "train2014").glob("*.png"))
    assert [p.stem for p in done] == coco_tree.train_ids[:2]
    assert list((out / "SegmentationClass" / "train2014").glob("*.part"))
    assert not (out / MANIFEST_NAME).exists()
    with pytest.raises(FileNotFoundError, match="did not finish"):
        WSSSDataModule(dataset="coco", data_root=str(out)).setup("fit")
    old = {p: p.stat().st_mtime_ns for p in done}
    for p in done:  # make a rewrite detectable even on coarse-mtime file systems
        os.utime(p, ns=(old[p] - 10**9, old[p] - 10**9))
    old = {p: p.stat().st_mtime_ns for p in done}

    monkeypatch.setattr(pc, "write_index_png", real_write)
    main(coco_tree.argv(out))
    assert {p: p.stat().st_mtime_ns for p in done} == old  # finished masks untouched
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["per_split"]["train"]["masks_kept_from_earlier_run"] == 2
    assert report["per_split"]["train"]["masks_written"] == 1
    assert report["per_split"]["train"]["stale_part_files_removed"] == 0  # replaced by the finished mask
    for i in coco_tree.train_ids + coco_tree.val_ids:
        assert _mask_path(out, i).is_file()
    assert not list(out.rglob("*.part"))
    WSSSDataModule(dataset="coco", data_root=str(out), global_batch_size=1, crop_size=32).setup("fit")


def test_coco_bad_image_refused_then_skipped(coco_tree, tmp_path: Path) -> None:
    bad = coco_tree.root / "val2014" / "COCO_val2014_000000000012.jpg"
    bad.write_bytes(b"\xff\xd8 not really")
    out = tmp_path / "coco"
    with pytest.raises(PrepareError, match=r"COCO_val2014_000000000012: cannot read .*000000000012\.jpg"):
        main(coco_tree.argv(out))
    main(coco_tree.argv(out, "--skip-bad"))
    assert (out / "splits" / "val.txt").read_text().split() == ["COCO_val2014_000000000011"]
    report = json.loads((out / REPORT_NAME).read_text())
    assert [s["image_id"] for s in report["skipped"]] == ["COCO_val2014_000000000012"]


def test_coco_missing_annotation_file(coco_tree, tmp_path: Path) -> None:
    (coco_tree.root / "annotations" / "instances_val2014.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"instances_val2014\.json"):
        main(coco_tree.argv(tmp_path / "coco"))
