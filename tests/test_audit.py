"""The label audit: numbers equal to a hand computation, both void conventions, the CAM curve, the files."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from clustercam_pl.data.imageio import write_index_png
from clustercam_pl.data.transforms import apply_transform
from clustercam_pl.metrics import scores_from_confmat
from clustercam_pl.tasks.audit import METRICS, audit, void_confmat
from label_fixtures import synthetic_dm, truth, write_export

# One 2x4 image, classes background, a, b. Labels have two void pixels (255).
MASK = np.array([[0, 0, 1, 1], [0, 2, 2, 1]], np.uint8)
LABELS = np.array([[0, 1, 1, 255], [255, 2, 1, 1]], np.uint8)
# CAMs of a and b, float16-exact: the best score (class) per pixel is
# .125a .25a .5a .75a / 0a .5625b .375a .625a
CAMS = np.array([[[0.125, 0.25, 0.5, 0.75], [0.0, 0.25, 0.375, 0.625]],
                 [[0, 0, 0, 0], [0, 0.5625, 0.125, 0]]], np.float16)


class HandDataset:
    """The item contract of the package's datasets, for one hand-made image."""

    ids = ["img"]
    with_mask = True
    transform = None

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> dict:
        image = np.zeros((2, 4, 3), np.uint8)
        img, mask = apply_transform(self.transform, image, MASK)
        return {"image": img, "mask": mask, "image_id": "img", "cls_label": torch.ones(2)}


class HandData:
    dataset = "hand"
    class_names = ("a", "b")

    def eval_dataset(self, split: str) -> HandDataset:
        return HandDataset()


@pytest.fixture
def hand_report(tmp_path):
    folder = tmp_path / "export"
    write_index_png(folder / "labels" / "img.png", LABELS)
    (folder / "cams").mkdir()
    np.savez(folder / "cams" / "img.npz", cams=CAMS, classes=np.array([0, 1], np.int16), image_size=np.array([2, 4]))
    return audit(HandData(), "val", folder, tmp_path / "audit"), tmp_path / "audit"


def test_scores_by_hand_void_excluded(hand_report):
    report, _ = hand_report
    t = report["sets"][0]["excluded"]
    # background: T=2 P=1 TP=1; a: T=2 P=4 TP=2 (one FP on background, one on b); b: T=2 P=1 TP=1 (FN to a).
    assert t["background"] | {} == pytest.approx(
        dict(iou=.5, precision=1, recall=.5, fp=0, fn=.5, fp_bg=0, fp_other=0, fn_bg=0, fn_other=.5, coverage=2 / 3))
    assert t["a"] == pytest.approx(
        dict(iou=.5, precision=.5, recall=1, fp=.5, fn=0, fp_bg=.25, fp_other=.25, fn_bg=0, fn_other=0, coverage=2 / 3))
    assert t["b"] == pytest.approx(
        dict(iou=.5, precision=1, recall=.5, fp=0, fn=.5, fp_bg=0, fp_other=0, fn_bg=0, fn_other=.5, coverage=1))
    assert t["mean"]["iou"] == pytest.approx(.5)
    assert t["mean"]["coverage"] == pytest.approx(6 / 8)  # of all pixels


def test_scores_by_hand_void_as_background(hand_report):
    report, _ = hand_report
    t = report["sets"][0]["as_background"]
    # void -> background: background T=3 P=3 TP=2; a T=3 P=4 TP=2 (its void pixel is now a FN to background).
    assert t["background"]["iou"] == pytest.approx(.5)
    assert (t["background"]["precision"], t["background"]["recall"]) == pytest.approx((2 / 3, 2 / 3))
    assert t["a"] == pytest.approx(dict(iou=.4, precision=.5, recall=2 / 3, fp=.4, fn=.2, fp_bg=.2, fp_other=.2,
                                        fn_bg=.2, fn_other=0, coverage=2 / 3))
    assert t["b"]["iou"] == pytest.approx(.5)
    assert t["mean"]["iou"] == pytest.approx((.5 + .4 + .5) / 3)


def test_cam_threshold_curve_by_hand(hand_report):
    report, out = hand_report
    curve = report["cam_curve"]
    miou = dict(zip(curve["thresholds"], curve["miou"], strict=True))
    assert len(miou) == 61 and min(miou) == 0.0 and max(miou) == 0.6
    assert miou[0.0] == pytest.approx((1 / 3 + .5 + .5) / 3)  # every pixel but the 0-score one is foreground
    assert miou[0.25] == pytest.approx(.75) and miou[0.45] == pytest.approx(.75)
    assert miou[0.5] == pytest.approx((.6 + 2 / 3 + .5) / 3)  # 0.5 is not above 0.5: that pixel is background
    assert miou[0.6] == pytest.approx((.5 + 2 / 3 + 0) / 3)
    assert (curve["best_threshold"], curve["best_miou"]) == (0.25, pytest.approx(.75))
    assert json.loads((out / "cam_curve.json").read_text())["best_threshold"] == 0.25
    assert (out / "cam_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_fp_fn_are_the_reference_ratios():
    cm = torch.tensor([[5, 2, 1], [3, 7, 0], [0, 4, 6]])
    s = scores_from_confmat(cm)
    T, P, TP = cm.sum(1).double(), cm.sum(0).double(), cm.diagonal().double()
    assert torch.allclose(s["fp"], (P - TP) / (T + P - TP)) and torch.allclose(s["fn"], (T - TP) / (T + P - TP))
    assert torch.allclose(s["iou"] + s["fp"] + s["fn"], torch.ones(3, dtype=torch.float64))
    assert torch.allclose(s["fp_bg"] + s["fp_other"], s["fp"]) and torch.allclose(s["fn_bg"] + s["fn_other"], s["fn"])
    assert math.isnan(scores_from_confmat(torch.zeros(2, 2))["iou"][0])


@pytest.mark.slow  # end to end: export, then the audit command over both sets
def test_audit_of_two_sets_on_synthetic(tmp_path):
    dm = synthetic_dm()
    data = truth(dm)
    a = write_export(tmp_path / "a", data, seed=0)
    b = write_export(tmp_path / "b", {k: (im, m) for k, (im, m) in data.items()}, seed=1, cams=False)
    for image_id, (_, mask) in list(data.items())[:2]:  # set b: two images perfect
        write_index_png(b / "labels" / f"{image_id}.png", mask)
    out = tmp_path / "audit"
    report = audit(dm, "val", a, out, against=b, n_examples=2)
    saved = json.loads((out / "audit.json").read_text())
    names = ["background", *dm.class_names, "mean"]
    for s in (0, 1):
        for conv in ("excluded", "as_background"):
            assert sorted(saved["sets"][s][conv]) == sorted(names)
            for n in names:
                values = [saved["sets"][s][conv][n][k] for k in METRICS]
                assert all(0 <= v <= 1 for v in values if not math.isnan(v)), (s, conv, n)
    # Independent count over every pixel: the mean IoU of set 0 with void excluded.
    cm = sum(void_confmat(np.asarray(__import__("PIL.Image").Image.open(a / "labels" / f"{i}.png")), m, 4)
             for i, (_, m) in data.items())
    iou = [cm[c, c] / (cm[c, :4].sum() + cm[:, c].sum() - cm[c, c]) for c in range(4)]
    assert report["sets"][0]["excluded"]["mean"]["iou"] == pytest.approx(np.mean(iou))
    delta = report["delta"]["excluded"]["mean"]["iou"]
    assert delta == pytest.approx(report["sets"][1]["excluded"]["mean"]["iou"] - report["sets"][0]["excluded"]["mean"]["iou"])
    assert {i for i, _ in report["changes"]["gained"]} >= set(list(data)[:2])
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert len(rows) == len(data) and {"iou_0", "coverage_0", "iou_1", "classes"} <= set(rows[0])
    for pic in ("examples.png", "changes.png", "cam_curve.png"):
        assert (out / pic).read_bytes()[:4] == b"\x89PNG", pic
    assert "delta" in (out / "summary.md").read_text()
    with pytest.raises(ValueError, match=r"holds audit outputs made with .*labels.*overwrite=true"):
        audit(dm, "val", b, out)
    with pytest.raises(ValueError, match=r"no image of synthetic train has labels in .*split="):
        audit(dm, "train", a, tmp_path / "other")
