"""Builders of fake VOC / SBD / COCO trees in the real layouts (small enough to prepare in < 1 s)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat

from clustercam_pl.data.imageio import voc_palette
from clustercam_pl.data.labels import COCO_CATEGORY_IDS, COCO_CLASSES, VOC_CLASSES


def write_jpeg(path: Path, h: int, w: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, "JPEG", quality=90)


def write_palette_png(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = mask.shape
    im = Image.frombytes("P", (w, h), mask.astype(np.uint8).tobytes())
    im.putpalette(voc_palette())
    im.save(path)


def box_mask(h: int, w: int, boxes: list[tuple[int, int, int, int, int]], boundary: bool) -> np.ndarray:
    """uint8 (H, W) with value v in each (y0, x0, y1, x1, v) box; 255 on box borders if ``boundary``."""
    m = np.zeros((h, w), np.uint8)
    for y0, x0, y1, x1, v in boxes:
        m[y0:y1, x0:x1] = v
        if boundary:
            m[y0, x0:x1] = m[y1 - 1, x0:x1] = 255
    return m


def write_xml(path: Path, names: list[str], part: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    objs = "".join(
        f"<object><name>{n}</name><difficult>{int(i == 1)}</difficult><truncated>0</truncated>"
        + ("<part><name>head</name></part>" if part else "")
        + "</object>"
        for i, n in enumerate(names)
    )
    path.write_text(f"<annotation><filename>x.jpg</filename>{objs}</annotation>", encoding="utf-8")


@dataclass
class VOCTree:
    voc: Path
    sbd: Path
    test: Path
    mask_labels: dict[str, list[int]] = field(default_factory=dict)  # classes in each mask
    xml_labels: dict[str, list[int]] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    splits: dict[str, list[str]] = field(default_factory=dict)

    def argv(self, out: Path, *extra: str) -> list[str]:
        return [
            "voc",
            "--voc-root",
            str(self.voc),
            "--sbd-root",
            str(self.sbd),
            "--test-root",
            str(self.test),
            "--out",
            str(out),
            "--workers",
            "0",
            "--no-progress",
            *extra,
        ]


def make_voc_tree(root: Path) -> VOCTree:
    """VOC2012 (3 train, 2 val), SBD (2 extra train images as .mat, overlapping ids too), 2 test images.

    train_aug = VOC train + SBD-only ids = 5. Image 2007_000002 has an extra XML object ('dog',
    difficult) that the mask does not show.
    """
    voc = root / "VOCdevkit" / "VOC2012"
    sbd = root / "benchmark_RELEASE" / "dataset"
    test = root / "VOC2012test" / "VOC2012"
    t = VOCTree(voc, sbd, test)
    specs = {  # id: (h, w, boxes as (y0, x0, y1, x1, class index), source)
        "2007_000001": (40, 48, [(2, 2, 20, 20, 0), (22, 24, 38, 46, 14)], "voc"),
        "2007_000002": (36, 44, [(4, 4, 30, 30, 7)], "voc"),
        "2007_000003": (48, 40, [(10, 10, 40, 30, 19)], "voc"),
        "2007_000010": (44, 52, [(0, 0, 20, 52, 2), (25, 5, 40, 25, 14)], "voc"),
        "2007_000011": (32, 32, [(5, 5, 25, 25, 11)], "voc"),
        "2008_000001": (40, 40, [(8, 8, 32, 32, 5)], "sbd"),
        "2008_000002": (38, 46, [(1, 1, 30, 20, 8), (5, 22, 35, 44, 17)], "sbd"),
    }
    for n, (image_id, (h, w, boxes, src)) in enumerate(specs.items()):
        write_jpeg(voc / "JPEGImages" / f"{image_id}.jpg", h, w, seed=n)
        m = box_mask(h, w, [(y0, x0, y1, x1, c + 1) for y0, x0, y1, x1, c in boxes], boundary=src == "voc")
        if src == "voc":
            write_palette_png(voc / "SegmentationClass" / f"{image_id}.png", m)
        else:
            (sbd / "cls").mkdir(parents=True, exist_ok=True)
            savemat(
                sbd / "cls" / f"{image_id}.mat",
                {"GTcls": {"Segmentation": m, "Boundaries": np.zeros(1), "CategoriesPresent": np.zeros(1)}},
            )
        classes = sorted({b[4] for b in boxes})
        names = [VOC_CLASSES[c] for c in classes] + (["dog"] if image_id == "2007_000002" else [])
        write_xml(voc / "Annotations" / f"{image_id}.xml", names)
        t.masks[image_id] = m
        t.mask_labels[image_id] = classes
        t.xml_labels[image_id] = sorted({VOC_CLASSES.index(n) for n in names})
    seg_lists = voc / "ImageSets" / "Segmentation"
    seg_lists.mkdir(parents=True)
    train = ["2007_000001", "2007_000002", "2007_000003"]
    val = ["2007_000010", "2007_000011"]
    (seg_lists / "train.txt").write_text("\n".join(train) + "\n")
    (seg_lists / "val.txt").write_text("\n".join(val) + "\n")
    (seg_lists / "trainval.txt").write_text("\n".join(train + val) + "\n")
    # SBD lists also name a VOC val id (must not enter train_aug) and a VOC train id.
    (sbd / "train.txt").write_text("2008_000001\n2007_000010\n")
    (sbd / "val.txt").write_text("2008_000002\n2007_000001\n")
    savemat(sbd / "cls" / "2007_000010.mat", {"GTcls": {"Segmentation": t.masks["2007_000010"].clip(0, 20)}})
    savemat(sbd / "cls" / "2007_000001.mat", {"GTcls": {"Segmentation": t.masks["2007_000001"].clip(0, 20)}})
    test_ids = ["2008_100001", "2008_100002"]
    for n, i in enumerate(test_ids):
        write_jpeg(test / "JPEGImages" / f"{i}.jpg", 30 + n, 34, seed=100 + n)
    (test / "ImageSets" / "Segmentation").mkdir(parents=True)
    (test / "ImageSets" / "Segmentation" / "test.txt").write_text("\n".join(test_ids) + "\n")
    t.splits = {
        "train": train,
        "val": val,
        "train_aug": sorted(train + ["2008_000001", "2008_000002"]),
        "test": test_ids,
    }
    return t


def _poly(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE (column-major run lengths, starting with a run of zeros)."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, prev, run = [], 0, 0
    for v in flat:
        if v != prev:
            counts.append(run)
            run, prev = 0, v
        run += 1
    counts.append(run)
    return {"counts": counts, "size": list(mask.shape)}


@dataclass
class COCOTree:
    root: Path
    train_ids: list[str]
    val_ids: list[str]
    dropped: list[str]

    def argv(self, out: Path, *extra: str) -> list[str]:
        return [
            "coco",
            "--coco-root",
            str(self.root),
            "--out",
            str(out),
            "--workers",
            "0",
            "--no-progress",
            *extra,
        ]


def make_coco_tree(root: Path) -> COCOTree:
    """train2014: 3 annotated images + 1 without annotations; val2014: 2 images of different sizes.

    In COCO_train2014_000000000001 (40x50): person (cat 1 -> value 1) box x 0-20, y 0-20; dog
    (cat 18 -> value 17) box x 15-35, y 10-30, overlapping the person at x 15-20, y 10-20 -> 255;
    a crowd 'person' RLE at x 40-50, y 30-40 -> 255 (crowd only); a non-crowd person at x 40-45, y 0-10.
    """
    cats = [
        {"id": cid, "name": n, "supercategory": "x"}
        for cid, n in zip(COCO_CATEGORY_IDS, COCO_CLASSES, strict=True)
    ]
    for split, specs in {
        "train": [(1, 40, 50), (2, 30, 30), (3, 36, 44), (4, 32, 32)],
        "val": [(11, 40, 48), (12, 28, 36)],
    }.items():
        images, anns = [], []
        for n, (iid, h, w) in enumerate(specs):
            name = f"COCO_{split}2014_{iid:012d}.jpg"
            write_jpeg(root / f"{split}2014" / name, h, w, seed=200 + iid + n)
            images.append({"id": iid, "file_name": name, "height": h, "width": w})

        def add(iid: int, cat: int, segm: object, crowd: int = 0, anns: list = anns) -> None:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": iid,
                    "category_id": cat,
                    "segmentation": segm,
                    "iscrowd": crowd,
                    "area": 1.0,
                    "bbox": [0, 0, 1, 1],
                }
            )

        if split == "train":
            add(1, 1, _poly(0, 0, 20, 20))
            add(1, 18, _poly(15, 10, 35, 30))
            crowd = np.zeros((40, 50), np.uint8)
            crowd[30:40, 40:50] = 1
            add(1, 1, _uncompressed_rle(crowd), crowd=1)
            add(1, 1, _poly(40, 0, 45, 10))
            add(2, 62, _poly(5, 5, 25, 25))  # chair
            add(3, 90, _poly(0, 0, 44, 18))  # toothbrush, the last category -> value 80
            add(3, 3, [[1, 1, 2, 2]])  # degenerate polygon: label kept, no pixels
            # image 4 has no annotation
        else:
            add(11, 5, _poly(10, 10, 30, 30))
            add(12, 44, _poly(0, 0, 36, 14))
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}2014.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats})
        )
    return COCOTree(
        root,
        [f"COCO_train2014_{i:012d}" for i in (1, 2, 3)],
        [f"COCO_val2014_{i:012d}" for i in (11, 12)],
        ["COCO_train2014_000000000004"],
    )


# ---------------------------------------------------------------- histopathology releases (LUAD-HistoSeg, BCSS-WSSS)
# The releases' palettes (their Readmes): index 0..3 = the classes, 4 = white background / excluded.
HISTO_PALETTES = {
    "luad": [205, 51, 51, 0, 255, 0, 65, 105, 225, 255, 165, 0, 255, 255, 255],
    "bcss": [255, 0, 0, 0, 255, 0, 0, 0, 255, 153, 0, 255, 255, 255, 255],
}
HISTO_TAGS = [(1, 0, 0, 1), (0, 1, 0, 0), (0, 0, 1, 1), (1, 1, 0, 0), (0, 0, 0, 1), (1, 0, 1, 0), (0, 1, 1, 1),
              (1, 0, 0, 0)]  # every class in >= 3 training patches


def histo_name(dataset: str, n: int, tag: tuple[int, ...] | None) -> str:
    """A file name of the release's form, with the tag ``[a b c d]`` (luad) / ``[abcd]`` (bcss) if given."""
    if dataset == "luad":
        return f"{1031280 + n}-{2300 + 224 * n}-27920" + ("" if tag is None else f"-[{' '.join(map(str, tag))}]")
    return f"TCGA-A1-A0SK-DX1_xmin{45749 + n}_ymin25055_MPP-0.2500+{n}" + (
        "" if tag is None else f"[{''.join(map(str, tag))}]")


def histo_patch(mask: np.ndarray, dataset: str, seed: int) -> np.ndarray:
    """uint8 (H, W, 3): the palette colour of each pixel's class (void white) with noise, so classes are visible."""
    colours = np.array(HISTO_PALETTES[dataset], np.int16).reshape(5, 3)  # (5, 3)
    noise = np.random.default_rng(seed).integers(-20, 21, (*mask.shape, 3))  # (H, W, 3)
    return np.clip(colours[mask] + noise, 0, 255).astype(np.uint8)


def write_histo_mask(path: Path, mask: np.ndarray, dataset: str) -> None:
    """A palette ("P") PNG with the release's 5-entry palette."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    im.putpalette(HISTO_PALETTES[dataset])
    im.save(path)


@dataclass
class HistoRelease:
    root: Path
    dataset: str
    train_labels: dict[str, list[int]] = field(default_factory=dict)  # prepared id -> classes of its tag
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # prepared id -> raw mask (values 0..4)

    def argv(self, out: Path, *extra: str) -> list[str]:
        return [self.dataset, f"--{self.dataset}-root", str(self.root), "--out", str(out), "--workers", "0", "--no-progress", *extra]


def make_histo_release(root: Path, dataset: str, size: int = 32, train_dir: str = "train") -> HistoRelease:
    """A stand-in of the release in its exact layout: 8 tagged training patches, 2 val + 2 test patches
    with palette masks (every val/test mask holds index 4); PNG like the release."""
    rel = HistoRelease(root, dataset)
    for n, tag in enumerate(HISTO_TAGS):
        present = [c for c, d in enumerate(tag) if d]
        mask = np.array(present, np.uint8)[np.arange(size) * len(present) // size][None, :].repeat(size, 0)  # (S, S)
        name = histo_name(dataset, n, tag)
        (root / train_dir).mkdir(parents=True, exist_ok=True)
        Image.fromarray(histo_patch(mask, dataset, n)).save(root / train_dir / f"{name}.png")
        rel.train_labels[f"train/{name}"] = present
    for s, split in enumerate(("val", "test")):
        for n in range(2):
            first = (0, 2, 1, 3)[2 * s + n]  # val shows every class, and so does test
            mask = np.full((size, size), first, np.uint8)  # (S, S)
            mask[: size // 2, : size // 2] = (first + 1) % 4
            mask[-4:, :] = 4  # white background / excluded
            name = histo_name(dataset, 100 + 10 * s + n, None)
            (root / split / "img").mkdir(parents=True, exist_ok=True)
            Image.fromarray(histo_patch(mask, dataset, 100 + n)).save(root / split / "img" / f"{name}.png")
            write_histo_mask(root / split / "mask" / f"{name}.png", mask, dataset)
            rel.masks[f"{split}/{name}"] = mask
    return rel
