"""Cut ISPRS Vaihingen tiles into patches with image-level tags: ``prepare vaihingen``.

The Potsdam step (:mod:`clustercam_pl.data.prepare_potsdam`: colours, clutter void, patches, tags,
split by tile, band statistics) with Vaihingen's release::

    top/top_mosaic_09cm_area1.tif                    IRRG true orthophoto, 3 bands uint8 (IR, R, G), TIFF
    gts_for_participants/top_mosaic_09cm_area1.tif   RGB-coded ground truth, the Potsdam colours

Vaihingen is a kind of its own (``data=vaihingen``), not an option of ``prepare potsdam``: its bands
(IRRG, 3) and its official tiles differ, and a prepared root names the kind it was made for, so a
Vaihingen root cannot be trained as Potsdam by mistake. Its tiles vary in size (about 2000 x 2500).
The full ground truth of the test tiles is ``ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE``
(pass it with ``--labels``) when ``gts_for_participants`` holds the training tiles only. The patches are
3-band; PAR and the figures take them as the colour image (a false-colour IRRG one).
"""

from __future__ import annotations

import argparse
from typing import Any

from clustercam_pl.data.prepare_potsdam import IsprsRelease, add_isprs_arguments, run_isprs

VAIHINGEN = IsprsRelease(
    dataset="vaihingen",
    image_dir="top",
    label_dir="gts_for_participants",
    image_pattern="top_mosaic_09cm_area{tile}.tif",
    label_pattern="top_mosaic_09cm_area{tile}.tif",
    bands=3,
    band_names=("IR", "R", "G"),
    # The ISPRS benchmark's split: 16 training areas, 17 test areas.
    train_tiles=("1", "3", "5", "7", "11", "13", "15", "17", "21", "23", "26", "28", "30", "32", "34", "37"),
    val_tiles=("2", "4", "6", "8", "10", "12", "14", "16", "20", "22", "24", "27", "29", "31", "33", "35", "38"),
)

HELP = "ISPRS Vaihingen: 3-band IRRG tiles cut into patches, tags from the ground truth"
DESCRIPTION = ("Cut the ISPRS Vaihingen release (top, gts_for_participants) into patches with image-level tags "
               "derived from the ground truth, split by tile (official train / test areas).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_isprs_arguments(p, VAIHINGEN)


def run(args: argparse.Namespace) -> dict[str, Any]:
    return run_isprs(VAIHINGEN, args)
