"""Stage two: training items whose mask is a fixed label map from a folder (exported, refined labels).

``data.label_dir`` holds one class-index PNG per training image, ``<image_id>.png`` (0 background,
c + 1 class c, 255 ignore; without a background class c = class c: values 0..K-1 and 255), as
``export_labels`` / ``refine`` write them. The training crop and
augmentation are applied to the image and its label together (the train transform already carries a
mask). The folder is checked against the split once, before training, as ``prepare`` checks a root:
every id must have a label of its image's size with label values (:func:`~clustercam_pl.data.labels.num_labels`)
and 255; otherwise the files are named and nothing trains.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from clustercam_pl.data.imageio import ImageReadError, read_mask
from clustercam_pl.data.labels import IGNORE_INDEX, label_range, mask_values_outside
from clustercam_pl.data.prepare_common import Problem
from clustercam_pl.data.transforms import apply_transform

_SHOWN = 10  # bad files named in the message


class RawSource(Protocol):
    """What a dataset kind offers stage two: ids, undecoded sizes and raw (untransformed) items."""

    num_classes: int

    def __len__(self) -> int: ...
    def item_id(self, index: int) -> str: ...
    def image_hw(self, index: int) -> tuple[int, int]: ...
    def raw_item(self, index: int) -> tuple[str, np.ndarray, np.ndarray]: ...


class LabelDirError(ValueError):
    """``data.label_dir`` does not match the training split; the message names the files."""


def label_path(label_dir: str | os.PathLike[str], image_id: str) -> Path:
    """Where the fixed label of ``image_id`` is read from."""
    return Path(label_dir) / f"{image_id}.png"


def check_label_dir(source: RawSource, label_dir: str | os.PathLike[str], split: str, background: bool = True) -> None:
    """Refuse a label folder that does not match ``split``: missing ids, other sizes, values that are
    neither a label value (``background``: the convention, :mod:`clustercam_pl.data.labels`) nor 255.

    Every label is decoded once (values must be checked). Raises :class:`LabelDirError` naming the files.
    """
    folder = Path(label_dir)
    if not folder.is_dir():
        raise LabelDirError(f"data.label_dir={os.fspath(label_dir)!r} is not a folder; pass the labels/ folder "
                            "that export_labels or refine wrote for the training split")
    K = source.num_classes
    problems: list[Problem] = []
    for i in range(len(source)):
        image_id = source.item_id(i)
        path = label_path(folder, image_id)
        if not path.is_file():
            problems.append(Problem(image_id, str(path), "missing label"))
            continue
        try:
            label = read_mask(path)  # (H, W) uint8
        except ImageReadError as e:
            problems.append(Problem(image_id, str(path), str(e)))
            continue
        hw = source.image_hw(i)
        if label.shape != hw:
            problems.append(Problem(image_id, str(path), f"label is {label.shape}, its image is {hw}"))
        elif bad := mask_values_outside(label, K, background):
            problems.append(Problem(image_id, str(path),
                                    f"values {bad} outside {label_range(K, background)} and {IGNORE_INDEX}"))
    if problems:
        lines = "\n  ".join(str(p) for p in problems[:_SHOWN])
        more = f"\n  ... and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        raise LabelDirError(
            f"data.label_dir={os.fspath(label_dir)!r} does not match the training split {split!r} "
            f"({len(problems)} of {len(source)} image(s)):\n  {lines}{more}\n"
            "Export the labels of this split (python -m clustercam_pl.export_labels ... split=<train split>), "
            "or set data.train_split to the split the folder was made for."
        )


class FixedLabelDataset(Dataset):
    """Training items of ``source`` with ``mask`` = the fixed label from ``label_dir``, augmented together.

    Items: ``image`` float32 (3, S, S), ``mask`` int64 (S, S) (255 ignore), ``cls_label`` float32 (K,),
    ``image_id`` str. ``check`` runs :func:`check_label_dir` here (the main process, before training);
    ``background``: the labels' convention (the data's ``has_background``).
    """

    def __init__(self, source: RawSource, label_dir: str | os.PathLike[str],
                 transform: Callable[..., dict[str, Any]], *, split: str = "train", check: bool = True,
                 background: bool = True) -> None:
        if check:
            check_label_dir(source, label_dir, split, background)
        self.source, self.label_dir, self.transform = source, Path(label_dir), transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id, image, cls_label = self.source.raw_item(index)  # (H, W, 3) uint8, (K,) float32
        path = label_path(self.label_dir, image_id)
        label = read_mask(path)  # (H, W) uint8
        if label.shape != image.shape[:2]:  # the folder changed after the check
            raise ImageReadError(f"label {path} is {label.shape}, its image is {image.shape[:2]}")
        img_t, mask_t = apply_transform(self.transform, image, label)
        return {"image": img_t, "mask": mask_t, "cls_label": torch.from_numpy(cls_label), "image_id": image_id}
