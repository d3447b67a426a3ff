"""Cut ISPRS Potsdam tiles into patches with image-level tags: ``prepare potsdam``.

Input, the release as it is distributed (``--root``; the folders can be named with ``--images`` and
``--labels``)::

    4_Ortho_RGBIR/top_potsdam_2_10_RGBIR.tif    6000 x 6000, 4 bands uint8 (R, G, B, IR), TIFF
    5_Labels_all/top_potsdam_2_10_label.tif     6000 x 6000 RGB-coded ground truth

Label colours (ISPRS 2D semantic labelling benchmark): impervious surfaces (255, 255, 255), building
(0, 0, 255), low vegetation (0, 255, 255), tree (0, 255, 0), car (255, 255, 0), clutter/background
(255, 0, 0). As in the protocol of the WSSS papers on Potsdam (field survey: ATSG, CTFA, OME) clutter
is not scored: it becomes void (255), and the five other classes are classes 0..4 (no background
class). Any other colour is refused, naming the file, the colour and a pixel that has it
(``--colour-tolerance`` accepts colours within a few levels of a class colour, e.g. resampled labels).

Output (see :mod:`clustercam_pl.data.layout`)::

    patches/<id>.tif                 the image patch, every band (tifffile), id = <tile>_y<row>_x<col>
    SegmentationClass/<id>.png       class-index mask: c = class c, 255 void (clutter)
    splits/{train,val}.txt, cls_labels.json, prepare_report.json, clustercam_dataset.json (last)

Patches: ``--patch-size`` (default 256, the WSSS protocol: 256 x 256 patches; ATSG / OME report 13,248
training and 8,064 evaluation patches on Potsdam) every ``--stride`` pixels (default: the patch size);
a last row / column that does not fit is moved back to end at the tile's edge, so every pixel is in a
patch (6000 px: 24 x 24 = 576 patches a tile; 14 test tiles give the 8,064). Tags: a class is present
in a patch when it covers at least ``--min-fraction`` of the patch's scored (non-clutter) pixels
(default 0.01: a handful of boundary pixels does not make a tag). Training patches without any tag
(all clutter) are left out (counted in the report); validation keeps every patch.

Split, by parent tile, so that no tile has patches on both sides: the official ISPRS training tiles
are ``train`` and its test tiles ``val`` (the tiles the papers evaluate on); ``--train-tiles`` /
``--val-tiles`` override either list (a tile in both is refused). With the official lists, tiles
missing under ``--root`` are listed in a warning and the report. Some papers train on 23 tiles
(13,248 = 23 x 576): pass the list without the tile they drop.

The per-channel mean and standard deviation of the training patches (in [0, 1] units) are stored in
the manifest with ``in_channels``; training normalises with them and the network keeps them.

Vaihingen (``prepare vaihingen``, :mod:`clustercam_pl.data.prepare_vaihingen`) is the same step with
its own file names, bands (IRRG, 3) and official tiles: :class:`IsprsRelease` holds what differs.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clustercam_pl.data.imageio import ImageReadError, read_bands, write_index_png
from clustercam_pl.data.labels import IGNORE_INDEX, write_label_file
from clustercam_pl.data.layout import MANIFEST_NAME, Manifest, SplitInfo, write_manifest, write_split_list
from clustercam_pl.data.prepare_common import (
    PrepareError,
    Problem,
    class_table,
    count_classes,
    handle_problems,
    require_path,
    run_tasks,
    write_report,
)
from clustercam_pl.utils.files import atomic_write, remove_partials

log = logging.getLogger(__name__)

PATCH_DIR = "patches"
MASK_DIR = "SegmentationClass"
LABEL_FILE = "cls_labels.json"
DEFAULT_PATCH = 256
DEFAULT_MIN_FRACTION = 0.01

ISPRS_CLASSES = ("impervious_surfaces", "building", "low_vegetation", "tree", "car")
"""The scored classes of the ISPRS benchmark, in channel order (class c = mask value c)."""
ISPRS_COLOURS: dict[tuple[int, int, int], int] = {
    (255, 255, 255): 0,  # impervious surfaces
    (0, 0, 255): 1,  # building
    (0, 255, 255): 2,  # low vegetation
    (0, 255, 0): 3,  # tree
    (255, 255, 0): 4,  # car
    (255, 0, 0): IGNORE_INDEX,  # clutter / background: not scored
}
"""RGB label colour -> mask value (ISPRS 2D semantic labelling; clutter void as the WSSS protocol)."""
COLOUR_NAMES = ("impervious surfaces", "building", "low vegetation", "tree", "car", "clutter")
"""The ISPRS names of `ISPRS_COLOURS`, in its order (messages)."""


@dataclass(frozen=True)
class IsprsRelease:
    """What differs between the ISPRS releases: file names, bands and the official tiles."""

    dataset: str  # the dataset kind written into the manifest
    image_dir: str  # default folders under --root
    label_dir: str
    image_pattern: str  # a file name with "{tile}"
    label_pattern: str
    bands: int
    band_names: tuple[str, ...]
    train_tiles: tuple[str, ...]
    val_tiles: tuple[str, ...]


POTSDAM = IsprsRelease(
    dataset="potsdam",
    image_dir="4_Ortho_RGBIR",
    label_dir="5_Labels_all",
    image_pattern="top_potsdam_{tile}_RGBIR.tif",
    label_pattern="top_potsdam_{tile}_label.tif",
    bands=4,
    band_names=("R", "G", "B", "IR"),
    # The ISPRS benchmark's split: 24 training tiles, 14 test tiles (as e.g. torchgeo's and mmseg's
    # Potsdam converters list them).
    train_tiles=("2_10", "2_11", "2_12", "3_10", "3_11", "3_12", "4_10", "4_11", "4_12", "5_10", "5_11", "5_12",
                 "6_7", "6_8", "6_9", "6_10", "6_11", "6_12", "7_7", "7_8", "7_9", "7_10", "7_11", "7_12"),
    val_tiles=("2_13", "2_14", "3_13", "3_14", "4_13", "4_14", "4_15", "5_13", "5_14", "5_15", "6_13", "6_14",
               "6_15", "7_13"),
)


@dataclass(frozen=True)
class _Task:
    """One tile: where it is read from and written to, and how it is cut."""

    tile: str
    split: str
    image: str
    label: str
    out: str
    bands: int
    size: int
    stride: int
    min_fraction: float
    tolerance: int
    keep_untagged: bool


@dataclass
class _TileResult:
    tile: str
    split: str
    ids: list[str] = field(default_factory=list)
    labels: dict[str, list[int]] = field(default_factory=dict)
    untagged: int = 0
    pixels: np.ndarray | None = None  # (K + 1,) scored pixels per class, then void
    band_sum: np.ndarray | None = None  # (bands,) float64 sums of the values in [0, 1]
    band_sq: np.ndarray | None = None  # (bands,) sums of squares
    count: int = 0  # pixels summed
    problem: Problem | None = None


def patch_starts(length: int, size: int, stride: int) -> list[int]:
    """Offsets of the patches along one side: every `stride`, the last moved back to end at the edge."""
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def decode_label(rgb: np.ndarray, path: str | Path, tolerance: int = 0) -> np.ndarray:
    """RGB-coded ISPRS ground truth (H, W, 3) uint8 -> mask (H, W) uint8 (class index, 255 clutter).

    A pixel matches a colour when every channel is within `tolerance` levels of it. A pixel of no class
    colour is refused (PrepareError) naming the file, the colour, where it is and how many there are.
    """
    mask = np.full(rgb.shape[:2], 254, np.uint8)  # 254: not matched yet (never a written value)
    levels = rgb.astype(np.int16)  # (H, W, 3), once: a 6000 x 6000 tile is 216 MB at int16
    for colour, value in ISPRS_COLOURS.items():
        near = (np.abs(levels - np.array(colour, np.int16)) <= tolerance).all(axis=-1)  # (H, W)
        mask[near & (mask == 254)] = value
    unknown = mask == 254
    if unknown.any():
        ys, xs = np.nonzero(unknown)
        y, x = int(ys[0]), int(xs[0])
        colours = ", ".join(f"{c} {n}" for c, n in zip(COLOUR_NAMES, ISPRS_COLOURS, strict=True))
        raise PrepareError(
            f"{path}: {int(unknown.sum())} pixel(s) of an unknown label colour, e.g. "
            f"{tuple(int(v) for v in rgb[y, x])} "
            f"at row {y}, column {x}; the ISPRS colours are {colours}. Pass the RGB-coded label file of the "
            "release, or --colour-tolerance N to accept colours within N levels of a class colour"
        )
    return mask



def _write_tiff(path: Path, patch: np.ndarray) -> None:
    """An (h, w, bands) uint8 patch as an interleaved TIFF, atomically (every band kept)."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    photometric = "rgb" if patch.shape[-1] in (3, 4) else "minisblack"
    extra = ["unspecified"] if patch.shape[-1] == 4 else None  # band 4 is IR, not alpha
    with atomic_write(path) as f:
        tifffile.imwrite(f, patch, photometric=photometric, planarconfig="contig", extrasamples=extra)


def _cut_tile(task: _Task) -> _TileResult:
    """Read one tile and its labels, write its patches and masks; a bad tile comes back as a problem."""
    res = _TileResult(task.tile, task.split)
    try:
        image = read_bands(task.image, task.bands)  # (H, W, bands) uint8
        label = read_bands(task.label, 3)  # (H, W, 3) RGB-coded
        if image.shape[:2] != label.shape[:2]:
            raise PrepareError(f"{task.label} is {label.shape[1]}x{label.shape[0]}, its image {task.image} is "
                               f"{image.shape[1]}x{image.shape[0]}: pass the label file of this tile")
        mask = decode_label(label, task.label, task.tolerance)  # (H, W)
        H, W = mask.shape
        if min(H, W) < task.size:
            raise PrepareError(f"{task.image} is {W}x{H}, smaller than one patch of --patch-size {task.size}")
    except (ImageReadError, PrepareError) as e:
        res.problem = Problem(task.tile, task.image, str(e))
        return res
    k = len(ISPRS_CLASSES)
    res.pixels = np.zeros(k + 1, np.int64)
    res.band_sum, res.band_sq = np.zeros(task.bands), np.zeros(task.bands)
    out = Path(task.out)
    for y in patch_starts(H, task.size, task.stride):
        for x in patch_starts(W, task.size, task.stride):
            m = mask[y : y + task.size, x : x + task.size]  # (S, S)
            counts = np.bincount(np.where(m == IGNORE_INDEX, k, m).ravel(), minlength=k + 1)  # (K + 1,)
            scored = int(counts[:k].sum())
            tags = [c for c in range(k) if scored and counts[c] >= task.min_fraction * scored]
            if not tags and not task.keep_untagged:
                res.untagged += 1
                continue
            image_id = f"{task.tile}_y{y}_x{x}"
            patch = image[y : y + task.size, x : x + task.size]  # (S, S, bands)
            _write_tiff(out / PATCH_DIR / f"{image_id}.tif", patch)
            write_index_png(out / MASK_DIR / f"{image_id}.png", np.ascontiguousarray(m))
            res.ids.append(image_id)
            res.labels[image_id] = tags
            res.pixels += counts
            v = patch.reshape(-1, task.bands).astype(np.float64) / 255.0  # (S*S, bands)
            res.band_sum += v.sum(0)
            res.band_sq += (v * v).sum(0)
            res.count += v.shape[0]
    return res


def _tile_lists(release: IsprsRelease, images: Path, labels: Path, train: Sequence[str] | None,
                val: Sequence[str] | None) -> tuple[dict[str, list[str]], list[str], list[str]]:
    """{split: tiles}, the official tiles missing under --root, and tiles found in neither split."""
    pattern = re.escape(release.image_pattern).replace(re.escape("{tile}"), "(.+)")
    found = sorted(m.group(1) for p in images.iterdir() if (m := re.fullmatch(pattern, p.name)))
    if not found:
        raise PrepareError(f"no tile under {images} is named like {release.image_pattern} (the release's "
                           f"image folder {release.image_dir}); pass the folder with --images")
    both = sorted(set(train or ()) & set(val or ()))
    if both:
        raise PrepareError(f"tile(s) {both} are in --train-tiles and in --val-tiles: a tile's patches would be in "
                           "both splits; give each tile to one split")
    splits, missing = {}, []
    for name, given, official in (("train", train, release.train_tiles), ("val", val, release.val_tiles)):
        if given:
            absent = [t for t in given if t not in found]
            if absent:
                raise PrepareError(f"--{name}-tiles {absent}: no {release.image_pattern.format(tile=absent[0])} "
                                   f"under {images} (tiles there: {', '.join(found[:12])}"
                                   f"{' ...' if len(found) > 12 else ''})")
            splits[name] = list(given)
        else:
            splits[name] = [t for t in official if t in found]
            missing += [t for t in official if t not in found]
        if not splits[name]:
            raise PrepareError(f"no {name} tile under {images}: the official {name} tiles are "
                               f"{', '.join(official)}; pass --{name}-tiles with tiles you have")
    for tiles in splits.values():
        for t in tiles:
            require_path(labels / release.label_pattern.format(tile=t), f"label file of tile {t}",
                         f"the release's {release.label_dir} folder; pass it with --labels")
    unused = [t for t in found if not any(t in tiles for tiles in splits.values())]
    return splits, missing, unused


def prepare_isprs(
    release: IsprsRelease,
    root: str | Path,
    out: str | Path,
    *,
    images: str | Path | None = None,
    labels: str | Path | None = None,
    patch_size: int = DEFAULT_PATCH,
    stride: int | None = None,
    min_fraction: float = DEFAULT_MIN_FRACTION,
    train_tiles: Sequence[str] | None = None,
    val_tiles: Sequence[str] | None = None,
    colour_tolerance: int = 0,
    skip_bad: bool = False,
    workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Cut the tiles of an ISPRS release into patches under ``out``; returns the report (also written).

    Raises:
        FileNotFoundError: the release folders or a tile's label file are missing.
        PrepareError: a bad option, a tile in both splits, or bad tiles (unreadable, wrong band count, an
            unknown label colour) and not ``skip_bad``; every message names the file.
    """
    root = Path(root)
    images = require_path(Path(images) if images else root / release.image_dir, "image folder (--images)")
    labels = require_path(Path(labels) if labels else root / release.label_dir, "label folder (--labels)")
    stride = patch_size if stride is None else stride
    if patch_size < 16 or stride < 1:
        raise PrepareError(f"--patch-size must be >= 16 and --stride >= 1, got {patch_size} and {stride}")
    if not 0 <= min_fraction <= 1:
        raise PrepareError(f"--min-fraction must be in [0, 1], got {min_fraction}")
    if not 0 <= colour_tolerance < 128:
        raise PrepareError(f"--colour-tolerance must be in 0..127, got {colour_tolerance}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)  # "not prepared" until this run has finished
    remove_partials([out / PATCH_DIR, out / MASK_DIR])  # of a killed earlier run
    splits, missing, unused = _tile_lists(release, images, labels, train_tiles, val_tiles)
    tasks = [
        _Task(t, name, str(images / release.image_pattern.format(tile=t)),
              str(labels / release.label_pattern.format(tile=t)), str(out), release.bands, patch_size, stride,
              min_fraction, colour_tolerance, keep_untagged=name != "train")
        for name, tiles in splits.items() for t in tiles
    ]
    results = {r.tile: r for r in run_tasks(_cut_tile, tasks, workers=workers, desc="tiles", progress=progress)}
    problems = sorted((r.problem for r in results.values() if r.problem), key=lambda p: p.image_id)
    bad = handle_problems(problems, skip_bad)  # tile names: a bad tile is left out whole
    kept = {name: [t for t in tiles if t not in bad] for name, tiles in splits.items()}
    ids = {name: [i for t in tiles for i in results[t].ids] for name, tiles in kept.items()}
    for name, split_ids in ids.items():
        if not split_ids:
            raise PrepareError(f"split {name!r} has no patch (tiles {kept[name] or 'none'}); check the tiles and "
                               "--min-fraction")
    train = [results[t] for t in kept["train"]]
    n = sum(r.count for r in train)
    mean = sum(r.band_sum for r in train) / n  # (bands,)
    std = np.sqrt(np.maximum(sum(r.band_sq for r in train) / n - mean**2, 1e-12))  # (bands,)
    label_of = {i: lab for r in results.values() for i, lab in r.labels.items()}
    report = _report(release, splits, kept, ids, label_of, results, mean, std, missing, unused, problems,
                     dict(patch_size=patch_size, stride=stride, min_fraction=min_fraction,
                          colour_tolerance=colour_tolerance, images=str(images), labels=str(labels)))
    for name, split_ids in ids.items():
        write_split_list(out / "splits" / f"{name}.txt", split_ids)
    write_label_file(out / LABEL_FILE, {i: label_of[i] for s in ids.values() for i in s}, ISPRS_CLASSES,
                     f"{release.dataset}: tags from the ground truth (class >= {min_fraction} of scored pixels)")
    write_report(out, report)
    infos = {name: SplitInfo(name=name, list_file=f"splits/{name}.txt", image_dir=PATCH_DIR, image_ext=".tif",
                             mask_dir=MASK_DIR, has_labels=True, num_images=len(split_ids))
             for name, split_ids in ids.items()}
    extra = {"in_channels": release.bands, "bands": list(release.band_names),
             "mean": [round(float(v), 6) for v in mean], "std": [round(float(v), 6) for v in std],
             "patch_size": patch_size, "stride": stride, "tiles": kept}
    write_manifest(out, Manifest(out, release.dataset, ISPRS_CLASSES, infos, {"gt": LABEL_FILE}, "gt", extra,
                                 has_background=False))
    _log_summary(report, out)
    return report


def _report(release: IsprsRelease, splits: dict[str, list[str]], kept: dict[str, list[str]], ids: dict[str, list[str]],
            label_of: dict[str, list[int]], results: dict[str, _TileResult], mean: np.ndarray, std: np.ndarray,
            missing: list[str], unused: list[str], problems: list[Problem], settings: dict[str, Any]) -> dict[str, Any]:
    """The content of ``prepare_report.json``: tiles, patches and tags per split, pixels, statistics."""
    k = len(ISPRS_CLASSES)
    pixel_fraction = {}
    for name, tiles in kept.items():
        total = sum((results[t].pixels for t in tiles), np.zeros(k + 1, np.int64))  # (K + 1,)
        scored = max(int(total[:k].sum()), 1)
        pixel_fraction[name] = {**{c: float(total[i]) / scored for i, c in enumerate(ISPRS_CLASSES)},
                                "void_of_all_pixels": float(total[k]) / max(int(total.sum()), 1)}
    return {
        "dataset": release.dataset,
        "classes": list(ISPRS_CLASSES),
        **settings,
        "tiles": kept,
        "official_tiles_missing": missing,
        "tiles_in_no_split": unused,
        "patches_per_split": {name: len(v) for name, v in ids.items()},
        "patches_per_class": {name: dict(zip(ISPRS_CLASSES, count_classes(v, label_of, k), strict=True))
                              for name, v in ids.items()},
        "train_patches_without_tag_left_out": sum(results[t].untagged for t in kept["train"]),
        "pixel_fraction": pixel_fraction,
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "skipped": problems,
        "requested_tiles": splits,
    }


def _log_summary(report: dict[str, Any], out: Path) -> None:
    names = report["classes"]
    sizes = report["patches_per_split"]
    counts = {s: list(per.values()) for s, per in report["patches_per_class"].items()}
    log.info(class_table(names, counts, sizes))
    log.info("tiles: %s", "; ".join(f"{s} {', '.join(t)}" for s, t in report["tiles"].items()))
    if report["official_tiles_missing"]:
        log.warning("official tiles not found (left out): %s", ", ".join(report["official_tiles_missing"]))
    if report["tiles_in_no_split"]:
        log.info("note: tiles in no split (not prepared): %s", ", ".join(report["tiles_in_no_split"]))
    if report["train_patches_without_tag_left_out"]:
        log.info("note: %d training patch(es) without a tag (all clutter) left out",
                 report["train_patches_without_tag_left_out"])
    log.info("band mean %s, std %s (training patches)", [round(v, 4) for v in report["mean"]],
             [round(v, 4) for v in report["std"]])
    log.info(f"prepared {sum(sizes.values())} patches under {out}; train with "
             f"`python -m clustercam_pl.train +experiment={report['dataset']}_vits data.data_root={out}`")


# ---------------------------------------------------------------------- the step of `prepare potsdam`
HELP = "ISPRS Potsdam: 4-band RGBIR tiles cut into patches, tags from the ground truth"
DESCRIPTION = ("Cut the ISPRS Potsdam release (4_Ortho_RGBIR, 5_Labels_all) into patches with image-level tags "
               "derived from the ground truth, split by tile (official train / test tiles).")


def add_isprs_arguments(p: argparse.ArgumentParser, release: IsprsRelease) -> None:
    """The options of ``prepare potsdam`` / ``prepare vaihingen`` (the shared ones are added by the command)."""
    p.add_argument("--root", required=True, help="the unpacked release")
    p.add_argument("--images", help=f"tile folder (default: ROOT/{release.image_dir}; files {release.image_pattern})")
    p.add_argument("--labels", help=f"RGB-coded label folder (default: ROOT/{release.label_dir}; files "
                                    f"{release.label_pattern})")
    p.add_argument("--patch-size", type=int, default=DEFAULT_PATCH, help="patch side in pixels (default 256)")
    p.add_argument("--stride", type=int, help="pixels between patches (default: the patch size, no overlap)")
    p.add_argument("--min-fraction", type=float, default=DEFAULT_MIN_FRACTION,
                   help="a class is a tag of a patch when it covers at least this fraction of its scored pixels "
                        f"(default {DEFAULT_MIN_FRACTION})")
    p.add_argument("--train-tiles", nargs="+", help="tile ids of train (default: the official training tiles)")
    p.add_argument("--val-tiles", nargs="+", help="tile ids of val (default: the official test tiles)")
    p.add_argument("--colour-tolerance", type=int, default=0,
                   help="accept label colours within this many levels of a class colour (default 0: exact)")


def run_isprs(release: IsprsRelease, args: argparse.Namespace) -> dict[str, Any]:
    """``prepare potsdam|vaihingen`` with parsed arguments."""
    return prepare_isprs(release, args.root, args.out, images=args.images, labels=args.labels,
                         patch_size=args.patch_size, stride=args.stride, min_fraction=args.min_fraction,
                         train_tiles=args.train_tiles, val_tiles=args.val_tiles,
                         colour_tolerance=args.colour_tolerance, skip_bad=args.skip_bad, workers=args.workers,
                         progress=not args.no_progress)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_isprs_arguments(p, POTSDAM)


def run(args: argparse.Namespace) -> dict[str, Any]:
    return run_isprs(POTSDAM, args)
