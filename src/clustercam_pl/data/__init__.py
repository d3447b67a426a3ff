"""Data: PASCAL VOC 2012 (+SBD), MS COCO 2014, LUAD-HistoSeg, BCSS-WSSS, your own folder and a synthetic set
behind one LightningDataModule.

Submodules: ``registry`` (the dataset kinds: each kind's facts on its dataset class, see
``DatasetKind``), ``labels`` (class names, label files), ``name_tags`` (labels written in file names),
``layout`` (prepared-root manifest), ``imageio``, ``transforms`` (albumentations recipes),
``prepared``/``voc``/``coco``/``luad``/``bcss``/``folder``/``synthetic`` (datasets), ``datamodule``
(``WSSSDataModule``), ``prepare_voc``/``prepare_coco``/``prepare_luad``/``prepare_bcss``/``prepare_folder``
(``python -m clustercam_pl.prepare``).

Names are imported lazily so ``import clustercam_pl.data`` stays cheap (no torch/lightning/cv2).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "WSSSDataModule": "datamodule",
    "DatasetKind": "registry",
    "dataset_kind": "registry",
    "dataset_names": "registry",
    "pad_collate": "datamodule",
    "VOCSegmentation": "voc",
    "COCOSegmentation": "coco",
    "FolderSegmentation": "folder",
    "LUADSegmentation": "luad",
    "BCSSSegmentation": "bcss",
    "write_folder_dataset": "synthetic",
    "SyntheticWSSS": "synthetic",
    "SyntheticConfig": "synthetic",
    "difficulty_knobs": "synthetic",
    "save_preview": "synthetic",
    "IMAGENET_MEAN": "transforms",
    "IMAGENET_STD": "transforms",
    "build_train_transform": "transforms",
    "build_eval_transform": "transforms",
    "VOC_CLASSES": "labels",
    "COCO_CLASSES": "labels",
    "LUAD_CLASSES": "labels",
    "BCSS_CLASSES": "labels",
    "IGNORE_INDEX": "labels",
    "read_label_file": "labels",
    "write_label_file": "labels",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
