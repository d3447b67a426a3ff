"""Label sets on disk for the audit and refinement tests: a synthetic split's masks, damaged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from clustercam_pl.data.datamodule import WSSSDataModule
from clustercam_pl.data.imageio import write_index_png
from clustercam_pl.tasks.audit import dataset_index, item_arrays, raw_dataset
from clustercam_pl.utils.files import write_json

SYNTH = dict(num_classes=3, image_size=48, num_train=4, num_val=6, num_test=2, max_objects=2,
             scale_range=(0.4, 0.7), class_colours=True)


def synthetic_dm(**synthetic) -> WSSSDataModule:
    return WSSSDataModule(dataset="synthetic", synthetic=SYNTH | synthetic, val_batch_size=2)


def truth(dm: WSSSDataModule, split: str = "val") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """id -> (image (H, W, 3) uint8, mask (H, W) uint8) of a split."""
    ds = raw_dataset(dm, split)
    return {i: item_arrays(ds[n]) for i, n in dataset_index(ds).items()}


def damaged(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """CAM-like pseudo labels: objects dilated (blobby), a void band at their border, salt noise."""
    out = np.zeros_like(mask)
    for c in np.unique(mask[mask > 0]):
        grown = ndimage.binary_dilation(mask == c, iterations=3)
        out[grown & (out == 0)] = c
    band = ndimage.binary_dilation(out > 0, iterations=1) & ~ndimage.binary_erosion(out > 0, iterations=1)
    out[band] = 255
    noise = rng.random(mask.shape) < 0.03
    out[noise] = rng.integers(0, mask.max() + 1, size=int(noise.sum()))
    return out


def write_export(folder: Path, data: dict[str, tuple[np.ndarray, np.ndarray]], seed: int = 0,
                 cams: bool = True, split: str = "val") -> Path:
    """An export_labels-style folder: labels/<id>.png (damaged masks), cams/<id>.npz, meta.json."""
    rng = np.random.default_rng(seed)
    for image_id, (_, mask) in data.items():
        write_index_png(folder / "labels" / f"{image_id}.png", damaged(mask, rng))
        if cams:
            classes = np.array(sorted(int(c) - 1 for c in np.unique(mask) if 0 < c < 255), dtype=np.int16)
            maps = np.stack([ndimage.gaussian_filter((mask == c + 1).astype(np.float32), 2) for c in classes]) \
                if len(classes) else np.zeros((0, *mask.shape), np.float32)
            (folder / "cams").mkdir(parents=True, exist_ok=True)
            np.savez_compressed(folder / "cams" / f"{image_id}.npz", cams=maps.astype(np.float16), classes=classes,
                                image_size=np.array(mask.shape, np.int32))
    write_json(folder / "meta.json", {"dataset": "synthetic", "split": split})
    return folder
