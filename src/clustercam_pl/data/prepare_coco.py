"""Prepare MS COCO 2014 as VOC-style class-index masks (needs ``pycocotools``: extra ``[coco]``).

Input::

    COCO/train2014/*.jpg  COCO/val2014/*.jpg
    COCO/annotations/instances_train2014.json  COCO/annotations/instances_val2014.json

Output (see :mod:`clustercam_pl.data.layout`): ``SegmentationClass/{train2014,val2014}/<id>.png``,
split lists ``train`` / ``val`` (images without any annotation are left out and counted in the report:
82,081 / 40,137 remain on the full data), label files ``cls_labels_annotations.json`` and
``cls_labels_mask.json``, the report and the manifest. Ids are file stems
(``COCO_train2014_000000000009``).

Mask policy (value per pixel; channel c = the c-th category id in ascending order, value c + 1):

* 0 where no annotation covers the pixel;
* c + 1 where non-crowd instances of exactly one class c cover it (instances of the same class may overlap);
* 255 (ignore) where non-crowd instances of two or more classes overlap: COCO polygons of touching
  objects overlap along their borders and the annotation cannot say who is in front;
* 255 where only a crowd region (``iscrowd=1``, a coarse RLE around many objects) covers the pixel,
  or a crowd region of another class than the instance under it. A crowd region over an instance of
  its own class keeps that class.

Image-level labels (``annotations``, default) are every category annotated in the image, crowd
included (a crowd region does contain the class); ``mask`` labels are the classes left in the mask.

Resumable: masks are written to a partial file and renamed, so a finished ``<id>.png`` is always
complete; a rerun keeps every finished mask whose size matches its image and does the rest. The
manifest is written last. Work is streamed image by image (one mask in memory per worker).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clustercam_pl.data.imageio import ImageReadError, image_size, read_mask, write_index_png
from clustercam_pl.data.labels import COCO_CATEGORY_IDS, COCO_CLASSES, IGNORE_INDEX, mask_classes, write_label_file
from clustercam_pl.data.layout import Manifest, SplitInfo, relative_to_root, write_manifest, write_split_list
from clustercam_pl.data.prepare_common import (
    Problem,
    class_table,
    count_classes,
    handle_problems,
    require_path,
    run_tasks,
    write_report,
)
from clustercam_pl.utils.files import remove_partials
from clustercam_pl.utils.imports import optional_import

MASK_DIR = "SegmentationClass"
K = len(COCO_CLASSES)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Task:
    image_id: str
    image: str
    height: int
    width: int
    anns: tuple[tuple[int, int, Any], ...]  # (channel, iscrowd, segmentation)
    out_mask: str
    full_decode: bool


def _decode(segm: Any, h: int, w: int) -> np.ndarray | None:
    """bool (H, W) mask of one COCO segmentation (polygons, RLE or compressed RLE); None if degenerate."""
    from pycocotools import mask as mask_utils

    if isinstance(segm, list):
        polys = [p for p in segm if len(p) >= 6]  # a polygon needs 3 points
        if not polys:
            return None
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
    elif isinstance(segm, dict) and "counts" in segm:
        if list(segm.get("size", [h, w])) != [h, w]:
            raise ValueError(f"RLE size {segm.get('size')} != image size {[h, w]}")
        rle = mask_utils.frPyObjects(segm, h, w) if isinstance(segm["counts"], list) else segm
    else:
        raise ValueError(f"unknown segmentation format {type(segm).__name__}")
    return mask_utils.decode(rle).astype(bool)  # (H, W)


def coco_class_mask(h: int, w: int, anns: tuple[tuple[int, int, Any], ...]) -> np.ndarray:
    """uint8 (H, W) class-index mask of one image under the overlap policy of the module docstring."""
    out = np.zeros((h, w), dtype=np.uint8)  # (H, W) value c + 1, 0 = unclaimed
    conflict = np.zeros((h, w), dtype=bool)
    for c, iscrowd, segm in sorted(anns, key=lambda a: a[1]):  # non-crowd first, crowd after
        m = _decode(segm, h, w)
        if m is None:
            continue
        v = c + 1
        if iscrowd:
            conflict |= m & (out != v)  # crowd alone, or over another class's instance
        else:
            conflict |= m & (out != 0) & (out != v)
            out[m & (out == 0)] = v
    out[conflict] = IGNORE_INDEX
    return out


def _process(task: _Task) -> dict[str, Any]:
    """Check one image, then keep its finished mask or write it. Runs in a worker process."""
    res: dict[str, Any] = {"id": task.image_id, "problems": [], "mask": None, "written": False}
    try:
        h, w = image_size(task.image, full_decode=task.full_decode)
    except ImageReadError as e:
        res["problems"].append(Problem(task.image_id, task.image, str(e)))
        return res
    if (h, w) != (task.height, task.width):
        res["problems"].append(
            Problem(
                task.image_id, task.image, f"image is {w}x{h}, annotations say {task.width}x{task.height}"
            )
        )
        return res
    out = Path(task.out_mask)
    if out.is_file():
        try:
            if image_size(out) == (h, w):
                res["mask"] = mask_classes(read_mask(out), K)
                return res
        except ImageReadError:
            pass  # unreadable leftover: rewrite it below
    try:
        mask = coco_class_mask(h, w, task.anns)
    except ValueError as e:
        res["problems"].append(Problem(task.image_id, task.image, f"bad annotation: {e}"))
        return res
    write_index_png(out, mask)
    res["mask"] = mask_classes(mask, K)
    res["written"] = True
    return res


def _load_split(
    ann_file: Path, image_dir: Path, mask_dir: Path, full_decode: bool
) -> tuple[list[_Task], int]:
    """Tasks for every annotated image of one split, and the number of images without annotations."""
    with open(ann_file, encoding="utf-8") as f:
        doc = json.load(f)
    cats = sorted(doc["categories"], key=lambda c: c["id"])
    ids = tuple(c["id"] for c in cats)
    names = tuple(c["name"] for c in cats)
    if ids != COCO_CATEGORY_IDS or names != COCO_CLASSES:
        raise ValueError(f"{ann_file}: categories differ from the 80 COCO 2014 categories (ids {ids[:5]}...)")
    channel = {cid: c for c, cid in enumerate(ids)}
    per_image: dict[int, list[tuple[int, int, Any]]] = {}
    for a in doc["annotations"]:
        per_image.setdefault(a["image_id"], []).append(
            (channel[a["category_id"]], int(a.get("iscrowd", 0)), a["segmentation"])
        )
    tasks = []
    unlabelled = 0
    for im in sorted(doc["images"], key=lambda im: im["file_name"]):
        anns = per_image.get(im["id"])
        if not anns:
            unlabelled += 1
            continue
        stem = Path(im["file_name"]).stem
        tasks.append(
            _Task(
                stem,
                str(image_dir / im["file_name"]),
                int(im["height"]),
                int(im["width"]),
                tuple(anns),
                str(mask_dir / f"{stem}.png"),
                full_decode,
            )
        )
    return tasks, unlabelled


def prepare_coco(
    coco_root: str | Path,
    out: str | Path,
    *,
    splits: tuple[str, ...] = ("train", "val"),
    year: str = "2014",
    skip_bad: bool = False,
    full_decode: bool = False,
    workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Write masks, split lists, label files and the manifest for COCO under ``out``; resumable.

    Returns the report (also in ``out/prepare_report.json``).

    Raises:
        ImportError: pycocotools is not installed.
        FileNotFoundError: an image folder or annotation file is missing (named).
        PrepareError: bad items and not ``skip_bad`` (each named with its file).
    """
    optional_import("pycocotools.mask", "prepare coco", "pycocotools", "coco")
    root = Path(coco_root)
    out = Path(out)
    require_path(root, "COCO folder (--coco-root)")
    ann_labels: dict[str, list[int]] = {}
    mask_labels: dict[str, list[int]] = {}
    split_ids: dict[str, list[str]] = {}
    split_infos: dict[str, SplitInfo] = {}
    problems: list[Problem] = []
    stats: dict[str, dict[str, int]] = {}
    for split in splits:
        sub = f"{split}{year}"
        image_dir = require_path(root / sub, f"COCO image folder for split {split!r}")
        ann_file = require_path(root / "annotations" / f"instances_{sub}.json", "COCO annotation file")
        mask_dir = out / MASK_DIR / sub
        mask_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"reading {ann_file}")
        tasks, unlabelled = _load_split(ann_file, image_dir, mask_dir, full_decode)
        for t in tasks:
            ann_labels[t.image_id] = sorted({c for c, _, _ in t.anns})
        written = reused = 0
        for r in run_tasks(_process, tasks, workers=workers, desc=f"COCO {sub} masks", progress=progress):
            problems += r["problems"]
            written += r["written"]
            if r["mask"] is not None:
                mask_labels[r["id"]] = r["mask"]
                reused += not r["written"]
        split_ids[split] = [t.image_id for t in tasks]
        stale = remove_partials([mask_dir], recursive=False)  # of a killed earlier run
        stats[split] = {
            "annotated_images": len(tasks),
            "images_without_annotations_dropped": unlabelled,
            "masks_written": written,
            "masks_kept_from_earlier_run": reused,
            "stale_part_files_removed": len(stale),
        }
        split_infos[split] = SplitInfo(name=split, list_file=f"splits/{split}.txt",
                                       image_dir=relative_to_root(image_dir, out), image_ext=".jpg",
                                       mask_dir=f"{MASK_DIR}/{sub}", has_labels=True)
        log.info(
            f"{sub}: {len(tasks)} annotated images ({unlabelled} without annotations left out), "
            f"{written} masks written, {reused} kept from an earlier run"
        )

    problems.sort(key=lambda p: p.image_id)
    bad = handle_problems(problems, skip_bad)
    kept = {s: [i for i in ids if i not in bad] for s, ids in split_ids.items()}
    for s, ids in kept.items():
        write_split_list(out / "splits" / f"{s}.txt", ids)
        split_infos[s] = dataclasses.replace(split_infos[s], num_images=len(ids))
    good = sorted(set().union(*(set(v) for v in kept.values())))
    label_files = {"annotations": "cls_labels_annotations.json", "mask": "cls_labels_mask.json"}
    write_label_file(
        out / label_files["annotations"], {i: ann_labels[i] for i in good}, COCO_CLASSES, "annotations"
    )
    write_label_file(out / label_files["mask"], {i: mask_labels[i] for i in good}, COCO_CLASSES, "mask")
    counts = {s: count_classes(ids, ann_labels, K) for s, ids in kept.items()}
    sizes = {s: len(ids) for s, ids in kept.items()}
    report: dict[str, Any] = {
        "dataset": "coco",
        "label_source": "annotations",
        "images_per_split": sizes,
        "images_per_class": {s: dict(zip(COCO_CLASSES, c, strict=True)) for s, c in counts.items()},
        "annotation_vs_mask_label_mismatches": {
            s: sum(ann_labels[i] != mask_labels.get(i) for i in ids) for s, ids in kept.items()
        },
        "per_split": stats,
        "skipped": problems if skip_bad else [],
    }
    write_report(out, report)
    write_manifest(out, Manifest(out, "coco", COCO_CLASSES, split_infos, label_files, "annotations"))
    log.info(class_table(COCO_CLASSES, counts, sizes))
    log.info(f"prepared COCO under {out}")
    return report


# ----------------------------------------------------------------------- the step of `prepare coco`
HELP = "MS COCO 2014"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m clustercam_pl.prepare coco`` (the shared ones are added by the command)."""
    p.add_argument(
        "--coco-root",
        required=True,
        help="folder with train2014/, val2014/, annotations/instances_{train,val}2014.json",
    )
    p.add_argument("--splits", nargs="+", default=["train", "val"], choices=("train", "val"))
    p.add_argument(
        "--full-decode", action="store_true", help="decode every JPEG fully (catches truncated files; slower)"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """``prepare coco`` with parsed arguments."""
    return prepare_coco(
        args.coco_root,
        args.out,
        splits=tuple(args.splits),
        skip_bad=args.skip_bad,
        full_decode=args.full_decode,
        workers=args.workers,
        progress=not args.no_progress,
    )
