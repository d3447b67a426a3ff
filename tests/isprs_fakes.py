"""A stand-in of the ISPRS Potsdam release in its exact formats, small enough to prepare in well under 1 s.

``4_Ortho_RGBIR/top_potsdam_<tile>_RGBIR.tif``: 4-band uint8 interleaved TIFF (tifffile), and
``5_Labels_all/top_potsdam_<tile>_label.tif``: the RGB-coded ground truth (the ISPRS colours). Each
tile is cut into quadrants of different classes (and a clutter strip), so patch tags are known.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

# The ISPRS colours in class order (impervious, building, low vegetation, tree, car), then clutter.
COLOURS = [(255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)]
CLUTTER = 5
TRAIN_TILES = ("2_10", "2_11")
VAL_TILES = ("2_13",)


@dataclass
class PotsdamTree:
    root: Path
    side: int
    classes: dict[str, np.ndarray]  # tile -> (H, W) class index 0..4, 5 clutter

    @property
    def image_dir(self) -> Path:
        return self.root / "4_Ortho_RGBIR"

    def image(self, tile: str) -> Path:
        return self.image_dir / f"top_potsdam_{tile}_RGBIR.tif"

    def label(self, tile: str) -> Path:
        return self.root / "5_Labels_all" / f"top_potsdam_{tile}_label.tif"


def tile_classes(side: int, seed: int) -> np.ndarray:
    """(side, side) class indices: four quadrants of distinct classes, a clutter strip on the left."""
    rng = np.random.default_rng(seed)
    a, b, c, d = rng.permutation(5)[:4]
    h = side // 2
    m = np.empty((side, side), np.uint8)
    m[:h, :h], m[:h, h:], m[h:, :h], m[h:, h:] = a, b, c, d
    m[:, :4] = CLUTTER
    return m


def bands_for(classes: np.ndarray, bands: int, seed: int) -> np.ndarray:
    """uint8 (H, W, bands): a per-class level plus noise in every band (the network can learn it)."""
    rng = np.random.default_rng(seed)
    base = (40 * classes.astype(np.int16) + 20)[..., None] + rng.integers(-10, 10, (*classes.shape, bands))
    return np.clip(base, 0, 255).astype(np.uint8)


def rgb_label(classes: np.ndarray) -> np.ndarray:
    return np.array(COLOURS, np.uint8)[classes]  # (H, W, 3)


def make_potsdam_tree(root: Path, side: int = 96, bands: int = 4) -> PotsdamTree:
    tree = PotsdamTree(root, side, {})
    tree.image_dir.mkdir(parents=True, exist_ok=True)
    tree.label(TRAIN_TILES[0]).parent.mkdir(parents=True, exist_ok=True)
    for k, tile in enumerate((*TRAIN_TILES, *VAL_TILES)):
        classes = tile_classes(side, k)
        tree.classes[tile] = classes
        tifffile.imwrite(tree.image(tile), bands_for(classes, bands, k), photometric="rgb",
                         extrasamples=["unspecified"] if bands == 4 else None)
        tifffile.imwrite(tree.label(tile), rgb_label(classes), photometric="rgb")
    return tree
