"""The dataset over a prepared root (shared by VOC and COCO).

Item contract (every dataset of this package, synthetic included)::

    {"image": float32 (N, H, W) normalised (N = 3 and ImageNet's mean / std unless the manifest says
              ``in_channels`` / ``mean`` / ``std``),
     "cls_label": float32 (K,) multi-hot (all zeros on splits without labels, e.g. VOC test),
     "mask": int64 (H, W), 0 background, c + 1 class c, 255 ignore   # only when with_mask; without
                                                                     # a background class c = class c
     "image_id": str}

Image-level labels come from the label file, never from the masks; training datasets are built with
``with_mask=False`` and do not open a single mask file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from clustercam_pl.data.imageio import (
    TIFF_SUFFIXES,
    ImageReadError,
    image_size,
    read_bands,
    read_mask,
    read_rgb,
    tiff_size,
)
from clustercam_pl.data.labels import (
    IGNORE_INDEX,
    label_convention,
    label_range,
    mask_values_outside,
    multi_hot,
    read_label_file,
)
from clustercam_pl.data.layout import Manifest, prepare_hint, read_image_files, read_manifest, read_split_list
from clustercam_pl.data.registry import DatasetKind
from clustercam_pl.data.transforms import apply_transform, build_eval_transform

log = logging.getLogger(__name__)

NEGATIVES = ("error", "keep", "drop")


def _preview(ids: list[str], n: int = 5) -> str:
    more = f" (+{len(ids) - n} more)" if len(ids) > n else ""
    return ", ".join(ids[:n]) + more


class PreparedSegmentation(Dataset, DatasetKind):
    """A split of a root written by ``python -m clustercam_pl.prepare``.

    Args:
        root: the prepared root (``--out`` of the prepare command).
        split: a split name from the manifest (VOC: train_aug, train, val, test; COCO: train, val).
        transform: albumentations pipeline called as ``t(image=..., mask=...)``; default: normalise only.
        with_mask: load masks. Default: whether the split has masks. Training passes False.
        label_source: a label source of the manifest (VOC: "xml" | "mask"; COCO: "annotations" | "mask")
            or a path to a label file; default: the manifest's default.
        require_labels: every image must have a label entry (training), and, unless ``negatives`` says
            otherwise, at least one class. An image without any is an error naming it, unless ``skip_unlabeled``.
        skip_unlabeled: drop (and log) images whose label is empty or missing instead of raising.
        negatives: what ``require_labels`` does with a negative image (an entry with no class): "error"
            (VOC/COCO: every training image shows a class), "keep" (its target is all zeros) or "drop"
            (left out, logged).
        check_files: check that every image (and mask) file exists, here, in the main process.
    """

    # The kind's facts (name, classes, splits, ...) are class attributes of each subclass: see DatasetKind.

    @classmethod
    def class_names_of(cls, root: str | None, config: Any) -> tuple[str, ...]:
        """``fixed_classes``, else the classes the prepared root's manifest lists (a folder dataset)."""
        if cls.fixed_classes is not None:
            return cls.fixed_classes
        return read_manifest(root, cls.name).classes

    @classmethod
    def channels_of(cls, root: str | None, config: Any) -> int:
        """The manifest's ``in_channels``, else the kind's."""
        stored = read_manifest(root, cls.name).in_channels
        return cls.in_channels if stored is None else stored

    @classmethod
    def normalization_of(cls, root: str | None, config: Any) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """The manifest's per-channel (mean, std); None: ImageNet's."""
        return read_manifest(root, cls.name).normalization

    @classmethod
    def has_background_of(cls, root: str | None, config: Any) -> bool:
        """``has_background`` when the kind fixes it, else the prepared root's manifest's ``has_background``."""
        if cls.has_background is not None:
            return cls.has_background
        return read_manifest(root, cls.name).has_background

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        transform: Callable[..., dict[str, Any]] | None = None,
        *,
        with_mask: bool | None = None,
        label_source: str | None = None,
        require_labels: bool = False,
        skip_unlabeled: bool = False,
        negatives: str = "error",
        check_files: bool = True,
    ) -> None:
        if negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
        self.manifest: Manifest = read_manifest(root, self.name)
        if self.fixed_classes is not None and self.manifest.classes != self.fixed_classes:
            raise ValueError(
                f"{self.manifest.root}: manifest classes differ from the {self.name} classes"
            )
        self.classes: tuple[str, ...] = self.manifest.classes
        if self.has_background is not None and self.manifest.has_background != self.has_background:
            raise ValueError(
                f"{self.manifest.root}: the manifest says has_background={self.manifest.has_background}, but "
                f"{self.name} data {'has' if self.has_background else 'has no'} background class; "
                f"{prepare_hint(self.name)}"
            )
        self.background: bool = self.manifest.has_background
        # Bands read strictly (a file with another count is refused) where the manifest states them; else
        # any photo is converted to RGB, as before.
        self.bands: int | None = self.manifest.in_channels
        self.negatives = negatives
        self.split = split
        self.info = self.manifest.split(split)
        self.transform = transform if transform is not None else build_eval_transform(
            *(self.manifest.normalization or (None, None)))
        if with_mask and self.info.mask_dir is None:
            raise ValueError(
                f"split {split!r} of {self.manifest.root} has no masks (with_mask=True was asked)"
            )
        self.with_mask = self.info.mask_dir is not None if with_mask is None else with_mask
        self.image_dir = self.manifest.path(self.info.image_dir)
        files = self.info.image_files
        self.image_files = read_image_files(self.manifest.path(files)) if files else None  # id -> file
        self.mask_dir = self.manifest.path(self.info.mask_dir) if self.info.mask_dir else None
        list_file = self.manifest.path(self.info.list_file)
        if not list_file.is_file():
            raise FileNotFoundError(f"split list {list_file} is missing; {prepare_hint(self.name)}")
        ids = read_split_list(list_file)
        if not ids:
            raise ValueError(f"split list {list_file} is empty")

        self.label_file: Path | None = None
        self.labels: dict[str, list[int]] = {}
        if self.info.has_labels:
            self.label_file = self.manifest.label_file(label_source)
            self.labels = read_label_file(self.label_file, self.num_classes, self.classes)
            ids = self._check_labels(ids, require_labels, skip_unlabeled)
        elif require_labels:
            raise ValueError(
                f"split {split!r} of {self.manifest.root} has no image-level labels; cannot train on it"
            )
        self.ids = ids
        if check_files:
            self._check_files()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def image_path(self, image_id: str) -> Path:
        """The image file of ``image_id``."""
        if self.image_files is not None:
            return self.image_dir / self.image_files[image_id]
        return self.image_dir / f"{image_id}{self.info.image_ext}"

    def _check_labels(self, ids: list[str], require: bool, skip: bool) -> list[str]:
        if require and self.negatives == "drop":
            negative = {i for i in ids if i in self.labels and not self.labels[i]}
            if negative:
                log.info("split %r: left out %d negative image(s) (no class; negatives='drop')",
                         self.split, len(negative))
                ids = [i for i in ids if i not in negative]
        missing = [i for i in ids if i not in self.labels]
        check_empty = require and self.negatives == "error"
        empty = [i for i in ids if i in self.labels and not self.labels[i]] if check_empty else []
        if not missing and not empty:
            return ids
        problems = []
        if missing:
            problems.append(
                f"{len(missing)} image id(s) of split {self.split!r} have no entry: {_preview(missing)}"
            )
        if empty:
            problems.append(
                f"{len(empty)} training image(s) have an empty label (no class present): {_preview(empty)}"
            )
        msg = f"label file {self.label_file}: " + "; ".join(problems)
        if not skip:
            raise ValueError(msg + " (pass data.skip_unlabeled=true to drop them)")
        log.warning("%s: skipped (data.skip_unlabeled=true)", msg)
        bad = set(missing) | set(empty)
        kept = [i for i in ids if i not in bad]
        if not kept:
            raise ValueError(f"no image of split {self.split!r} has a label in {self.label_file}")
        return kept

    def _check_files(self) -> None:
        if self.image_files is not None:
            unlisted = [i for i in self.ids if i not in self.image_files]
            if unlisted:
                raise ValueError(
                    f"{len(unlisted)} image id(s) of split {self.split!r} are not in {self.info.image_files}: "
                    f"{_preview(unlisted, 3)}; {prepare_hint(self.name)}"
                )
        missing = [str(p) for p in map(self.image_path, self.ids) if not p.is_file()]
        if self.with_mask and self.mask_dir is not None:
            missing += [
                str(self.mask_dir / f"{i}.png")
                for i in self.ids
                if not (self.mask_dir / f"{i}.png").is_file()
            ]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} file(s) of split {self.split!r} listed in {self.info.list_file} "
                f"are missing: {_preview(missing, 3)}; {prepare_hint(self.name)}"
            )

    def _check_mask_values(self, mask: np.ndarray, path: Path) -> None:
        """Refuse a mask with values outside the class range (e.g. a file edited after prepare)."""
        bad = mask_values_outside(mask, self.num_classes, self.background)
        if bad:
            raise ImageReadError(
                f"mask {path} has values {bad} outside {label_range(self.num_classes, self.background)} and "
                f"{IGNORE_INDEX} ({label_convention(self.background)}, {IGNORE_INDEX} ignore); fix or replace the "
                f"file, or re-create "
                f"the root {self.manifest.root}: {prepare_hint(self.name)}"
            )

    def __len__(self) -> int:
        return len(self.ids)

    # The raw side, for stage two's fixed labels (data.fixed_labels.RawSource).
    def item_id(self, index: int) -> str:
        return self.ids[index]

    def image_hw(self, index: int) -> tuple[int, int]:
        """(H, W) of item ``index`` from its file's header (no decoding)."""
        path = self.image_path(self.ids[index])
        strict_tiff = self.bands is not None and path.suffix.lower() in TIFF_SUFFIXES
        return tiff_size(path) if strict_tiff else image_size(path)  # tifffile: any band count

    def read_image(self, image_id: str) -> np.ndarray:
        """uint8 (H, W, N) of ``image_id``: exactly the manifest's ``in_channels`` bands, else RGB."""
        path = self.image_path(image_id)
        return read_rgb(path) if self.bands is None else read_bands(path, self.bands)

    def raw_item(self, index: int) -> tuple[str, np.ndarray, np.ndarray]:
        """(image id, uint8 (H, W, N) image, float32 (K,) multi-hot label), untransformed."""
        image_id = self.ids[index]
        return image_id, self.read_image(image_id), multi_hot(self.labels.get(image_id, ()), self.num_classes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.ids[index]
        image = self.read_image(image_id)  # (H, W, N) uint8
        mask = None
        if self.with_mask:
            assert self.mask_dir is not None
            mask_path = self.mask_dir / f"{image_id}.png"
            mask = read_mask(mask_path)  # (H, W) uint8
            if mask.shape != image.shape[:2]:
                raise ImageReadError(f"mask {mask_path} is {mask.shape}, its image is {image.shape[:2]}")
            self._check_mask_values(mask, mask_path)
        img_t, mask_t = apply_transform(self.transform, image, mask)
        label = multi_hot(self.labels.get(image_id, ()), self.num_classes)
        item: dict[str, Any] = {"image": img_t, "cls_label": torch.from_numpy(label), "image_id": image_id}
        if mask_t is not None:
            item["mask"] = mask_t
        return item

    def label_matrix(self) -> np.ndarray:
        """float32 (len, K) multi-hot labels of all items, in order (no image decoding)."""
        return np.stack([multi_hot(self.labels.get(i, ()), self.num_classes) for i in self.ids])
