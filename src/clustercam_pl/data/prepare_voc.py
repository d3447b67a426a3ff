"""Prepare PASCAL VOC 2012 (+ SBD) for training and evaluation.

Input (the official tarballs, unpacked)::

    VOC2012/{JPEGImages, SegmentationClass, Annotations, ImageSets/Segmentation/{train,val}.txt}
    SBD:    benchmark_RELEASE/dataset/{cls/<id>.mat, train.txt, val.txt}   (--sbd-root), or
            a ready SegmentationClassAug/<id>.png folder                    (--aug-root)
    test:   VOC2012 test release with JPEGImages and ImageSets/Segmentation/test.txt   (--test-root)

Output (see :mod:`clustercam_pl.data.layout`): ``SegmentationClassAug/<id>.png`` for train_aug and val,
split lists train_aug / train / val (/ test), label files ``cls_labels_xml.json`` and
``cls_labels_mask.json``, the report and the manifest.

Masks: the official VOC ``SegmentationClass`` mask wins where it exists (it has the 255 boundaries),
then the ``--aug-root`` PNG, then the SBD ``GTcls.Segmentation`` (values 0..20, no void), as in the
widely used SegmentationClassAug. ``train_aug`` = (VOC train | SBD train | SBD val) - VOC val, or with
``--aug-root`` (ids with an aug PNG | VOC train) - VOC val: 10,582 images on the full data.

Labels: ``xml`` (default, what the reference's ``cls_labels.npy`` holds) = the ``<name>`` of every
``<object>`` in ``Annotations/<id>.xml`` (difficult and truncated objects included; ``<part>`` names
ignored), so it can list a class the mask does not show. ``mask`` = classes with a pixel in the mask.
"""

from __future__ import annotations

import argparse
import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clustercam_pl.data.imageio import ImageReadError, image_size, read_mask, write_index_png
from clustercam_pl.data.labels import IGNORE_INDEX, VOC_CLASSES, mask_classes, mask_values_outside, write_label_file
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

MASK_DIR = "SegmentationClassAug"
TRAIN_SPLITS = ("train_aug", "train")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Task:
    image_id: str
    image: str
    mask_src: str | None  # .png or SBD .mat; None for test images
    xml: str | None
    out_mask: str | None
    full_decode: bool


def _load_source_mask(path: str) -> np.ndarray:
    """uint8 (H, W) class indices from a VOC/aug PNG or an SBD ``cls/*.mat``."""
    if path.endswith(".mat"):
        from scipy.io import loadmat

        try:
            gt = loadmat(path, squeeze_me=True, struct_as_record=False)["GTcls"]
            seg = np.asarray(gt.Segmentation)
        except Exception as e:  # scipy raises several types for a bad .mat
            raise ImageReadError(f"cannot read SBD mask {path}: {type(e).__name__}: {e}") from e
        if seg.ndim != 2 or seg.min() < 0 or seg.max() > 255:
            raise ImageReadError(f"SBD mask {path}: GTcls.Segmentation is not a 2-D uint8 index map")
        return seg.astype(np.uint8)
    return read_mask(path)


def _xml_labels(path: str) -> list[int]:
    """Indices of the VOC classes named by the ``<object>`` elements of an annotation file."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise ValueError(f"cannot parse annotation {path}: {e}") from e
    found = set()
    for obj in root.findall("object"):  # direct children only: <part><name> is not a class
        name = (obj.findtext("name") or "").strip()
        if name not in VOC_CLASSES:
            raise ValueError(f"annotation {path} names unknown class {name!r}")
        found.add(VOC_CLASSES.index(name))
    return sorted(found)


def _process(task: _Task) -> dict[str, Any]:
    """Check one image (and its mask and XML); write its mask. Runs in a worker process."""
    res: dict[str, Any] = {"id": task.image_id, "problems": [], "xml": None, "mask": None}
    try:
        h, w = image_size(task.image, full_decode=task.full_decode)
    except ImageReadError as e:
        res["problems"].append(Problem(task.image_id, task.image, str(e)))
        return res
    if task.xml is not None:
        if not Path(task.xml).is_file():
            res["problems"].append(Problem(task.image_id, task.xml, "missing XML annotation"))
        else:
            try:
                res["xml"] = _xml_labels(task.xml)
            except ValueError as e:
                res["problems"].append(Problem(task.image_id, task.xml, str(e)))
    if task.out_mask is None:
        return res
    if task.mask_src is None:
        res["problems"].append(Problem(task.image_id, task.image, "no mask found (VOC, --aug-root or SBD)"))
        return res
    try:
        mask = _load_source_mask(task.mask_src)  # (H, W) uint8
    except ImageReadError as e:
        res["problems"].append(Problem(task.image_id, task.mask_src, str(e)))
        return res
    if mask.shape != (h, w):
        res["problems"].append(
            Problem(
                task.image_id, task.mask_src, f"mask size {mask.shape[1]}x{mask.shape[0]} != image {w}x{h}"
            )
        )
        return res
    bad = mask_values_outside(mask, len(VOC_CLASSES))
    if bad:
        res["problems"].append(
            Problem(task.image_id, task.mask_src, f"mask values {bad} outside 0..20 and {IGNORE_INDEX}")
        )
        return res
    res["mask"] = mask_classes(mask, len(VOC_CLASSES))
    write_index_png(task.out_mask, mask)
    return res


def _read_ids(path: Path, what: str) -> list[str]:
    require_path(path, what)
    return [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _voc_splits(
    voc: Path, sbd_root: str | Path | None, aug_root: str | Path | None
) -> tuple[dict[str, list[str]], Path | None, Path | None]:
    """The ids of train, val and (with SBD or an aug folder) train_aug; the SBD cls/ and aug folders."""
    lists = voc / "ImageSets" / "Segmentation"
    splits: dict[str, list[str]] = {
        "train": _read_ids(lists / "train.txt", "VOC split list"),
        "val": _read_ids(lists / "val.txt", "VOC split list"),
    }
    val_set = set(splits["val"])
    sbd_cls: Path | None = None
    aug_dir: Path | None = None
    if sbd_root is not None:
        sbd = require_path(Path(sbd_root), "SBD dataset folder (--sbd-root)")
        sbd_cls = require_path(sbd / "cls", "SBD cls/ folder of .mat masks")
        sbd_ids: set[str] = set()
        for name in ("train.txt", "val.txt"):
            sbd_ids |= set(_read_ids(sbd / name, "SBD split list"))
        splits["train_aug"] = sorted((sbd_ids | set(splits["train"])) - val_set)
    if aug_root is not None:
        aug_dir = require_path(Path(aug_root), "SegmentationClassAug folder (--aug-root)")
        aug_ids = {p.stem for p in aug_dir.glob("*.png")}
        ids = aug_ids | set(splits["train"]) | set(splits.get("train_aug", ()))
        splits["train_aug"] = sorted(ids - val_set)
    if "train_aug" not in splits:
        log.info("note: neither --sbd-root nor --aug-root given: split train_aug is not written (only train/val)")
    return splits, sbd_cls, aug_dir


def _tasks(
    voc: Path, out: Path, splits: dict[str, list[str]], sbd_cls: Path | None, aug_dir: Path | None,
    use_xml: bool, full_decode: bool,
) -> list[_Task]:
    """One task per labelled image: its mask source (VOC mask, then aug PNG, then SBD .mat) and XML."""
    jpeg_dir, seg_dir, ann_dir = voc / "JPEGImages", voc / "SegmentationClass", voc / "Annotations"

    def mask_source(i: str) -> str | None:
        for p in (
            seg_dir / f"{i}.png",
            aug_dir / f"{i}.png" if aug_dir else None,
            sbd_cls / f"{i}.mat" if sbd_cls else None,
        ):
            if p is not None and p.is_file():
                return str(p)
        return None

    labelled = sorted(set().union(*(set(v) for v in splits.values())))
    return [
        _Task(i, str(jpeg_dir / f"{i}.jpg"), mask_source(i), str(ann_dir / f"{i}.xml") if use_xml else None,
              str(out / MASK_DIR / f"{i}.png"), full_decode)
        for i in labelled
    ]


def _test_split(voc: Path, test_root: str | Path | None) -> tuple[Path | None, list[str]]:
    """The test images' folder and ids (``--test-root``, or a test list inside ``voc``); (None, []) if none."""
    troot = Path(test_root) if test_root is not None else voc
    if test_root is None and not (voc / "ImageSets/Segmentation/test.txt").is_file():
        log.info("note: no --test-root and no ImageSets/Segmentation/test.txt: split test is not written")
        return None, []
    test_ids = _read_ids(troot / "ImageSets/Segmentation/test.txt", "VOC test split list")
    return require_path(troot / "JPEGImages", "VOC test JPEGImages folder"), test_ids


def _check(
    tasks: list[_Task], splits: dict[str, list[str]], labels_from: str, workers: int, progress: bool
) -> tuple[list[Problem], dict[str, list[int]], dict[str, list[int]]]:
    """Every image through the workers (which write the masks): problems, XML labels, mask labels; an
    empty label of a training image is a problem."""
    problems: list[Problem] = []
    xml_labels: dict[str, list[int]] = {}
    mask_labels: dict[str, list[int]] = {}
    for r in run_tasks(_process, tasks, workers=workers, desc="VOC images", progress=progress):
        problems += r["problems"]
        if r["xml"] is not None:
            xml_labels[r["id"]] = r["xml"]
        if r["mask"] is not None:
            mask_labels[r["id"]] = r["mask"]
    labels = xml_labels if labels_from == "xml" else mask_labels
    failed = {p.image_id for p in problems}
    train_ids = set().union(*(set(splits[s]) for s in TRAIN_SPLITS if s in splits))
    for i in sorted(train_ids - failed):
        if not labels.get(i):
            problems.append(Problem(i, f"{labels_from} labels", "empty label vector in a training split"))
    problems.sort(key=lambda p: p.image_id)
    return problems, xml_labels, mask_labels


def prepare_voc(
    voc_root: str | Path,
    out: str | Path,
    *,
    sbd_root: str | Path | None = None,
    aug_root: str | Path | None = None,
    test_root: str | Path | None = None,
    labels_from: str = "xml",
    skip_bad: bool = False,
    full_decode: bool = True,
    workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Check the VOC tree, write masks, split lists, label files and the manifest under ``out``.

    Returns the report (also written to ``out/prepare_report.json``); the summary is logged.

    Raises:
        FileNotFoundError: a required folder or list file is missing (named).
        PrepareError: bad items and not ``skip_bad`` (each named with its file).
    """
    if labels_from not in ("xml", "mask"):
        raise ValueError(f"labels_from must be 'xml' or 'mask', got {labels_from!r}")
    voc = Path(voc_root)
    out = Path(out)
    require_path(voc, "VOC2012 folder (--voc-root)")
    jpeg_dir = require_path(voc / "JPEGImages", "VOC JPEGImages folder")
    if labels_from == "xml":
        require_path(voc / "Annotations", "VOC Annotations folder (needed for --labels-from xml)")
    use_xml = (voc / "Annotations").is_dir()
    splits, sbd_cls, aug_dir = _voc_splits(voc, sbd_root, aug_root)
    (out / MASK_DIR).mkdir(parents=True, exist_ok=True)
    tasks = _tasks(voc, out, splits, sbd_cls, aug_dir, use_xml, full_decode)
    test_jpeg, test_ids = _test_split(voc, test_root)
    tasks += [_Task(i, str(test_jpeg / f"{i}.jpg"), None, None, None, full_decode) for i in test_ids]
    problems, xml_labels, mask_labels = _check(tasks, splits, labels_from, workers, progress)
    bad = handle_problems(problems, skip_bad)

    kept = {name: [i for i in ids if i not in bad] for name, ids in splits.items()}
    kept_test = [i for i in test_ids if i not in bad]
    good = sorted(set().union(*(set(v) for v in kept.values())))
    label_files = {"mask": "cls_labels_mask.json", **({"xml": "cls_labels_xml.json"} if use_xml else {})}
    labels = xml_labels if labels_from == "xml" else mask_labels
    counts = {name: count_classes(ids, labels, len(VOC_CLASSES)) for name, ids in kept.items()}
    sizes = {name: len(ids) for name, ids in kept.items()}
    mismatch = (
        {name: sum(xml_labels.get(i) != mask_labels.get(i) for i in ids) for name, ids in kept.items()}
        if use_xml
        else {}
    )
    report: dict[str, Any] = {
        "dataset": "voc",
        "label_source": labels_from,
        "images_per_split": {**sizes, **({"test": len(kept_test)} if test_jpeg is not None else {})},
        "images_per_class": {name: dict(zip(VOC_CLASSES, c, strict=True)) for name, c in counts.items()},
        "xml_vs_mask_label_mismatches": mismatch,
        "skipped": problems if skip_bad else [],
    }
    for name, ids in kept.items():
        write_split_list(out / "splits" / f"{name}.txt", ids)
    if test_jpeg is not None:
        write_split_list(out / "splits" / "test.txt", kept_test)
    for source, file in label_files.items():
        source_labels = xml_labels if source == "xml" else mask_labels
        write_label_file(out / file, {i: source_labels[i] for i in good}, VOC_CLASSES, source)
    write_report(out, report)
    _write_manifest(out, jpeg_dir, kept, test_jpeg, kept_test, label_files, labels_from)
    log.info(class_table(VOC_CLASSES, counts, sizes))
    if test_jpeg is not None:
        log.info(f"test: {len(kept_test)} images (no masks, no labels)")
    if mismatch:
        log.info("images whose XML labels differ from their mask labels: "
                 + ", ".join(f"{k} {v}" for k, v in mismatch.items()))
    log.info(f"prepared VOC under {out}")
    return report


def _write_manifest(
    out: Path, jpeg_dir: Path, kept: dict[str, list[str]], test_jpeg: Path | None, kept_test: list[str],
    label_files: dict[str, str], labels_from: str,
) -> None:
    """The manifest, last: every split with masks and labels, test (if any) with neither."""
    infos = {
        name: SplitInfo(name=name, list_file=f"splits/{name}.txt", image_dir=relative_to_root(jpeg_dir, out),
                        image_ext=".jpg", mask_dir=MASK_DIR, has_labels=True, num_images=len(ids))
        for name, ids in kept.items()
    }
    if test_jpeg is not None:
        infos["test"] = SplitInfo(name="test", list_file="splits/test.txt", image_dir=relative_to_root(test_jpeg, out),
                                  image_ext=".jpg", mask_dir=None, has_labels=False, num_images=len(kept_test))
    write_manifest(out, Manifest(out, "voc", VOC_CLASSES, infos, label_files, labels_from))


# ------------------------------------------------------------------------ the step of `prepare voc`
HELP = "PASCAL VOC 2012 + SBD"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m clustercam_pl.prepare voc`` (the shared ones are added by the command)."""
    p.add_argument("--voc-root", required=True, help="VOCdevkit/VOC2012 (JPEGImages, SegmentationClass, ...)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--sbd-root", help="SBD benchmark_RELEASE/dataset (cls/*.mat, train.txt, val.txt)")
    src.add_argument("--aug-root", help="a ready SegmentationClassAug folder of PNG masks")
    p.add_argument("--test-root", help="VOC2012 test release folder (JPEGImages, ImageSets/Segmentation/test.txt)")
    p.add_argument(
        "--labels-from",
        choices=("xml", "mask"),
        default="xml",
        help="default label source: XML <object> names (reference) or mask classes",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="check images by header only (faster; a truncated JPEG is then not caught)",
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """``prepare voc`` with parsed arguments."""
    return prepare_voc(
        args.voc_root,
        args.out,
        sbd_root=args.sbd_root,
        aug_root=args.aug_root,
        test_root=args.test_root,
        labels_from=args.labels_from,
        skip_bad=args.skip_bad,
        full_decode=not args.quick,
        workers=args.workers,
        progress=not args.no_progress,
    )
