"""Dataset preparation entry point: ``python -m clustercam_pl.prepare voc|coco|folder|import-labels ...``.

Examples::

    python -m clustercam_pl.prepare voc --voc-root VOCdevkit/VOC2012 \\
        --sbd-root benchmark_RELEASE/dataset --test-root VOC2012test/VOC2012 --out data/voc
    python -m clustercam_pl.prepare coco --coco-root COCO2014 --out data/coco
    python -m clustercam_pl.prepare folder --images my/images --labels my/labels.csv \\
        --classes my/classes.txt --masks my/masks --val-fraction 0.1 --seed 0 --out data/mine
    python -m clustercam_pl.prepare import-labels --npy cls_labels.npy --dataset voc \\
        --out data/voc/cls_labels_reference.json --allow-pickle

Then train with ``data.data_root=data/voc`` (or set ``CLUSTERCAM_DATA`` to the folder holding
``voc``/``coco``); a folder dataset with ``data=folder data.data_root=data/mine``.
Exit status: 0 done, 1 refused (bad or missing input; the message names the files).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from clustercam_pl.data.prepare_common import PrepareError, default_workers


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clustercam_pl.prepare", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--out", required=True, help="prepared root to write (data_root for training)")
        sp.add_argument(
            "--skip-bad",
            action="store_true",
            help="leave out bad images (reported and listed in prepare_report.json) instead of failing",
        )
        sp.add_argument(
            "--workers",
            type=int,
            default=default_workers(),
            help="worker processes for the per-image work (0: in this process)",
        )
        sp.add_argument("--no-progress", action="store_true", help="no progress bar")

    voc = sub.add_parser("voc", help="PASCAL VOC 2012 + SBD")
    voc.add_argument(
        "--voc-root", required=True, help="VOCdevkit/VOC2012 (JPEGImages, SegmentationClass, ...)"
    )
    src = voc.add_mutually_exclusive_group()
    src.add_argument("--sbd-root", help="SBD benchmark_RELEASE/dataset (cls/*.mat, train.txt, val.txt)")
    src.add_argument("--aug-root", help="a ready SegmentationClassAug folder of PNG masks")
    voc.add_argument(
        "--test-root", help="VOC2012 test release folder (JPEGImages, ImageSets/Segmentation/test.txt)"
    )
    voc.add_argument(
        "--labels-from",
        choices=("xml", "mask"),
        default="xml",
        help="default label source: XML <object> names (reference) or mask classes",
    )
    voc.add_argument(
        "--quick",
        action="store_true",
        help="check images by header only (faster; a truncated JPEG is then not caught)",
    )
    common(voc)

    coco = sub.add_parser("coco", help="MS COCO 2014")
    coco.add_argument(
        "--coco-root",
        required=True,
        help="folder with train2014/, val2014/, annotations/instances_{train,val}2014.json",
    )
    coco.add_argument("--splits", nargs="+", default=["train", "val"], choices=("train", "val"))
    coco.add_argument(
        "--full-decode", action="store_true", help="decode every JPEG fully (catches truncated files; slower)"
    )
    common(coco)

    folder = sub.add_parser(
        "folder",
        help="your own images with image-level labels (and optional masks)",
        description="Check and prepare your own images: image-level labels from a CSV, a JSON or the "
        "folder names, optional masks, train/val(/test) splits. Every problem is named with its file.",
    )
    folder.add_argument("--images", required=True, help="image folder (any sub-folders)")
    lab = folder.add_mutually_exclusive_group(required=True)
    lab.add_argument(
        "--labels",
        help="CSV with the header `image,labels` (class names separated by --label-sep; empty = negative "
        'image) or JSON {"<image path>": ["class", ...]}; paths relative to --images',
    )
    lab.add_argument(
        "--labels-from-folders",
        action="store_true",
        help="the first folder under --images is the image's (single) class",
    )
    folder.add_argument(
        "--classes", help="one class name per line; line i = class i in masks (default: the names found, sorted)"
    )
    folder.add_argument(
        "--masks",
        help="optional masks <image path without suffix>.png: 0 background, i = class i, 255 ignore",
    )
    folder.add_argument(
        "--binary-masks", action="store_true", help="one-class masks stored as 0/255: read 255 as class 1"
    )
    folder.add_argument("--label-sep", default=";", help="separator of class names in the CSV (default ;)")
    spl = folder.add_mutually_exclusive_group(required=True)
    spl.add_argument(
        "--val-fraction", type=float, help="fraction of each class's images for val (rare classes reach val)"
    )
    spl.add_argument("--splits", help="folder with train.txt, val.txt (and test.txt): image paths, one a line")
    folder.add_argument("--seed", type=int, default=0, help="seed of the --val-fraction split (default 0)")
    folder.add_argument(
        "--quick", action="store_true", help="check images by header only (faster; misses truncated files)"
    )
    common(folder)

    imp = sub.add_parser(
        "import-labels", help="convert the reference's pickled cls_labels.npy to a label file"
    )
    imp.add_argument("--npy", required=True, help="cls_labels.npy (a pickled dict id -> float32[K])")
    imp.add_argument("--dataset", choices=("voc", "coco"), required=True)
    imp.add_argument("--out", required=True, help="label file (.json) to write")
    imp.add_argument(
        "--allow-pickle",
        action="store_true",
        help="required: unpickling can run code, so only use a file you trust",
    )
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Run a prepare command; errors about the input are raised (they name the files)."""
    args = _parser().parse_args(argv)
    progress = not args.no_progress if hasattr(args, "no_progress") else True
    if args.command == "voc":
        from clustercam_pl.data.prepare_voc import prepare_voc

        prepare_voc(
            args.voc_root,
            args.out,
            sbd_root=args.sbd_root,
            aug_root=args.aug_root,
            test_root=args.test_root,
            labels_from=args.labels_from,
            skip_bad=args.skip_bad,
            full_decode=not args.quick,
            workers=args.workers,
            progress=progress,
        )
    elif args.command == "coco":
        from clustercam_pl.data.prepare_coco import prepare_coco

        prepare_coco(
            args.coco_root,
            args.out,
            splits=tuple(args.splits),
            skip_bad=args.skip_bad,
            full_decode=args.full_decode,
            workers=args.workers,
            progress=progress,
        )
    elif args.command == "folder":
        from clustercam_pl.data.prepare_folder import prepare_folder

        prepare_folder(
            args.images,
            args.out,
            labels=args.labels,
            labels_from_folders=args.labels_from_folders,
            classes=args.classes,
            masks=args.masks,
            binary_masks=args.binary_masks,
            label_sep=args.label_sep,
            val_fraction=args.val_fraction,
            seed=args.seed,
            splits=args.splits,
            skip_bad=args.skip_bad,
            full_decode=not args.quick,
            workers=args.workers,
            progress=progress,
        )
    else:
        from clustercam_pl.data.labels import class_names, import_reference_npy, write_label_file

        classes = class_names(args.dataset)
        labels = import_reference_npy(args.npy, len(classes), allow_pickle=args.allow_pickle)
        write_label_file(args.out, labels, classes, source=f"reference npy {args.npy}")
        print(f"wrote {len(labels)} labels to {args.out}; use it with label_source={args.out}")


def cli(argv: Sequence[str] | None = None) -> int:
    """``main`` for the shell: prints an input error as one message and returns exit status 1."""
    try:
        main(argv)
    except (PrepareError, FileNotFoundError, ImportError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
