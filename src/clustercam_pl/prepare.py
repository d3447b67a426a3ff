"""Dataset preparation entry point: ``python -m clustercam_pl.prepare voc|coco|luad|bcss|folder|import-labels ...``.

Examples::

    python -m clustercam_pl.prepare voc --voc-root VOCdevkit/VOC2012 \\
        --sbd-root benchmark_RELEASE/dataset --test-root VOC2012test/VOC2012 --out data/voc
    python -m clustercam_pl.prepare coco --coco-root COCO2014 --out data/coco
    python -m clustercam_pl.prepare luad --luad-root LUAD-HistoSeg --out data/luad
    python -m clustercam_pl.prepare bcss --bcss-root BCSS-WSSS --out data/bcss
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
import logging
import sys
from collections.abc import Sequence

from clustercam_pl.data.prepare_common import PrepareError, default_workers
from clustercam_pl.data.registry import prepare_steps

log = logging.getLogger(__name__)


def _common(sp: argparse.ArgumentParser) -> None:
    """The options every prepare step takes."""
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clustercam_pl.prepare", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    # One sub-command per prepare step: clustercam_pl.data.prepare_<name> (see clustercam_pl.data.registry).
    for name, step in prepare_steps().items():
        sp = sub.add_parser(name, help=step.HELP, description=getattr(step, "DESCRIPTION", None))
        step.add_arguments(sp)
        _common(sp)
    imp = sub.add_parser(
        "import-labels", help="convert the reference's pickled cls_labels.npy to a label file"
    )
    imp.add_argument("--npy", required=True, help="cls_labels.npy (a pickled dict id -> float32[K])")
    imp.add_argument("--dataset", required=True, help="a dataset kind with fixed classes (voc, coco)")
    imp.add_argument("--out", required=True, help="label file (.json) to write")
    imp.add_argument(
        "--allow-pickle",
        action="store_true",
        help="required: unpickling can run code, so only use a file you trust",
    )
    return p


def _import_labels(args: argparse.Namespace) -> None:
    from clustercam_pl.data.labels import import_reference_npy, write_label_file
    from clustercam_pl.data.registry import dataset_kind, dataset_names

    classes = dataset_kind(args.dataset).fixed_classes
    if classes is None:
        fixed = [n for n in dataset_names() if dataset_kind(n).fixed_classes is not None]
        raise ValueError(f"--dataset {args.dataset}: its classes are not fixed (they come from its prepared root); "
                         f"import-labels converts the reference's labels of a dataset with fixed classes: {fixed}")
    labels = import_reference_npy(args.npy, len(classes), allow_pickle=args.allow_pickle)
    write_label_file(args.out, labels, classes, source=f"reference npy {args.npy}")
    log.info("wrote %d labels to %s; use it with label_source=%s", len(labels), args.out, args.out)


def main(argv: Sequence[str] | None = None) -> None:
    """Run a prepare command; errors about the input are raised (they name the files). Progress and the
    summary are logged (``logging``; the shell entry shows INFO and above)."""
    args = _parser().parse_args(argv)
    if args.command == "import-labels":
        _import_labels(args)
    else:
        prepare_steps()[args.command].run(args)


class _Plain(logging.Formatter):
    """The message alone; a warning or error prefixed with its level (``warning: ...``)."""

    def format(self, record: logging.LogRecord) -> str:
        msg = super().format(record)
        return msg if record.levelno <= logging.INFO else f"{record.levelname.lower()}: {msg}"


def cli(argv: Sequence[str] | None = None) -> int:
    """``main`` for the shell: prints an input error as one message and returns exit status 1."""
    handler = logging.StreamHandler(sys.stdout)  # the summary, as before; errors go to stderr
    handler.setFormatter(_Plain())
    logging.basicConfig(level=logging.INFO, handlers=[handler])  # no-op where logging is set up already
    try:
        main(argv)
    except (PrepareError, FileNotFoundError, ImportError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
