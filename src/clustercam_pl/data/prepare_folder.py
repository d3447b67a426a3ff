"""Prepare a user's own images with image-level labels (and optional masks): ``prepare folder``.

Input::

    --images DIR        images in any sub-folders (suffixes in IMAGE_EXTENSIONS, any case); an image's
                        id is its path relative to DIR without the suffix, e.g. ``scans/p7/001``
    --labels FILE       CSV with the header ``image,labels`` (class names separated by ``;``, empty =
                        a negative image) or JSON ``{"<path>": ["class", ...]}``; paths relative to DIR
    --labels-from-folders  instead: the first folder under DIR names the image's single class
    --labels-from-name P   instead: tags in the file names, ``luad``, ``bcss`` or a regex with one group
                        (see :mod:`clustercam_pl.data.name_tags`); an untagged image with a mask takes the
                        classes of its mask
    --classes FILE      optional: one class name per line, line i = class i (mask value i); without
                        it the names found in the labels, sorted
    --masks DIR         optional: ``<id>.png`` single-channel or palette, 0 background, i = class i,
                        255 ignore (``--binary-masks``: 255 is class 1 of a one-class dataset);
                        ``--no-background``: no background class, value i = the class on line i + 1;
                        ``--void V``: the values of excluded pixels (stored as 255; default 255)
    splits              ``--val-fraction F --seed S`` (per class, so rare classes reach val) or
                        ``--splits DIR`` with train.txt, val.txt [, test.txt] (one image path a line)

Output (see :mod:`clustercam_pl.data.layout`): split lists, ``cls_labels.json``, ``image_files.json``
(id -> file: suffixes differ), ``SegmentationClass/<id>.png`` for splits with masks, the report and,
last, the manifest (dataset ``folder`` with the class names), so ``data=folder data.data_root=OUT``
trains with K and the names read from it. Images are not copied.

The same steps and checks prepare the histopathology releases (``prepare luad``, ``prepare bcss``,
:func:`prepare_release`): a fixed layout instead of the options, no background class, void index 4.

Every problem found is named with its file (and ``file:line`` for label, class and split files): an
unreadable image, a label naming an unknown class, a labels row without an image or an image without
a row, duplicate rows, two files with one id, a mask of the wrong size or with values outside 0..K
and 255, and masks that are all 0/255 (the foreground stored as 255). Per-image problems are refused
together, or with ``skip_bad`` left out and listed in the report; mistakes in the files' structure
(header, columns, class list, overlapping split files) are refused at once.

Idempotent and restartable: the manifest of an earlier run is removed first (the root reads as "not
prepared" until this run finishes), every check is redone (the input may have been fixed since),
every file is written under a temporary name and renamed, and the manifest is written last.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import io
import json
import logging
import os
import random
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from clustercam_pl.data.imageio import IMAGE_EXTENSIONS, ImageReadError, image_size, read_mask, write_index_png
from clustercam_pl.data.labels import IGNORE_INDEX, class_offset, num_labels, write_label_file
from clustercam_pl.data.layout import (
    MANIFEST_NAME,
    Manifest,
    SplitInfo,
    relative_to_root,
    write_image_files,
    write_manifest,
    write_split_list,
)
from clustercam_pl.data.name_tags import NameTagError, NameTags, name_tags, parse_name_tag
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
from clustercam_pl.utils.files import remove_partials

DATASET = "folder"  # the kind this step prepares (clustercam_pl.data.folder)
MASK_DIR = "SegmentationClass"
LABEL_FILE = "cls_labels.json"
IMAGE_FILES = "image_files.json"
SPLIT_FILES = ("train", "val", "test")  # --splits DIR: train.txt and val.txt required, test.txt optional
_SHOWN_NAMES = 12  # class names listed in an "unknown class" message

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Row:
    """One labels entry: the image path as written, the class names, and where it is (``file:line``)."""

    path: str
    names: tuple[str, ...]
    where: str


def image_id(rel_path: str) -> str:
    """The id of an image: its path relative to the image folder, POSIX separators, without suffix."""
    return str(PurePosixPath(rel_path).with_suffix(""))


def _normalise(path: str) -> str | None:
    """A path as written in a labels or split file -> POSIX relative path; None if absolute or with '..'."""
    p = PurePosixPath(path.strip().replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or not p.parts:
        return None
    return str(p)


def scan_images(root: Path, exclude: Sequence[Path] = ()) -> list[str]:
    """Image files under ``root`` (relative POSIX paths, sorted); hidden names and ``exclude`` folders skipped.

    Symbolic links are followed (a class folder may link elsewhere), but a folder link that points back
    into the tree walked (a loop would list every image again under a longer path, with the link's folder
    as its class) and one file reached under two paths (one image under two ids, possibly in train and
    val) are refused, naming the link.
    """
    skip = {os.path.abspath(p) for p in exclude}
    found: list[str] = []
    first_of: dict[tuple[int, int], str] = {}  # (device, inode) of a real file -> its first path
    same: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and os.path.abspath(os.path.join(dirpath, d)) not in skip
        )
        here = os.path.realpath(dirpath)
        for d in dirnames:
            link = os.path.join(dirpath, d)
            target = os.path.realpath(link)
            if os.path.islink(link) and (here == target or here.startswith(target.rstrip(os.sep) + os.sep)):
                raise PrepareError(
                    f"{link} is a symbolic link to {target}, a folder that contains it: a loop that would list "
                    f"every image under it again with another path and class. Remove the link (rm {shlex.quote(link)})"
                )
        rel_dir = Path(dirpath).relative_to(root)
        for f in filenames:
            if f.startswith(".") or os.path.splitext(f)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            rel = (rel_dir / f).as_posix()
            st = os.stat(os.path.join(dirpath, f))
            other = first_of.setdefault((st.st_dev, st.st_ino), rel)
            if other != rel:
                same.append(f"{root / rel} and {root / other}")
            found.append(rel)
    if same:
        more = f" ... and {len(same) - 10} more" if len(same) > 10 else ""
        raise PrepareError(
            f"{len(same)} image file(s) are reached twice under {root} (through a symbolic link or a hard link): "
            f"{'; '.join(sorted(same)[:10])}{more}. One image under two paths gets two ids (and, with "
            "--labels-from-folders, two classes) and can land in train and in val; remove the extra link"
        )
    return sorted(found)


def read_text(path: Path) -> str:
    """A text input file (labels, classes, split list) decoded as UTF-8 (a BOM is dropped); a file in
    another encoding is refused naming the file, the line and how to convert it."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        fixed = path.with_name(f"{path.stem}.utf8{path.suffix}")
        raise PrepareError(
            f"{path}:{line}: not UTF-8 (byte 0x{data[e.start]:02x}); input files must be UTF-8. A file saved "
            f"by Excel or Notepad on Windows is usually Windows-1252: convert it with "
            f"`iconv -f cp1252 -t utf-8 {shlex.quote(str(path))} > {shlex.quote(str(fixed))}` and pass {fixed} instead"
        ) from None


# ------------------------------------------------------------------------------------ input files
def read_classes_file(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """Class names, line i = class i (mask value i). Blank lines inside, duplicates and 'background' are errors."""
    path = require_path(Path(path), "classes file (--classes)")
    lines = read_text(path).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names: list[str] = []
    first: dict[str, int] = {}
    for n, line in enumerate(lines, 1):
        name = line.strip()
        if not name:
            raise PrepareError(
                f"{path}:{n}: empty line; line i names class i (mask value i), so a blank line would shift "
                "every class after it: remove it"
            )
        if name.lower() == "background":
            raise PrepareError(
                f"{path}:{n}: {name!r} is not a class: background is mask value 0 and is not listed "
                "(line 1 is class 1): remove this line"
            )
        if name in first:
            raise PrepareError(f"{path}:{n}: class {name!r} is listed twice (first on line {first[name]})")
        first[name] = n
        names.append(name)
    if not names:
        raise PrepareError(f"{path} lists no class (one class name per line)")
    return tuple(names)


def read_csv_labels(path: Path, sep: str = ";") -> list[_Row]:
    """Rows of a CSV labels file with the header ``image,labels``; a structural mistake names file:line."""
    if not sep:
        raise PrepareError("--label-sep must not be empty")
    rows: list[_Row] = []
    with io.StringIO(read_text(path), newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip().lower() for h in header] != ["image", "labels"]:
            found = "an empty file" if header is None else f"`{','.join(header)}`"
            raise PrepareError(
                f"{path}:1: the first row must be the header `image,labels`, found {found} "
                f"(then one row per image: `path/to/image.jpg,class a{sep}class b`)"
            )
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != 2:
                raise PrepareError(
                    f"{where}: expected 2 columns `image,labels`, found {len(row)} (quote a field that "
                    'contains a comma: `"a,b.jpg",cat`; a negative image is `path,` with empty labels)'
                )
            names = tuple(dict.fromkeys(n.strip() for n in row[1].split(sep) if n.strip()))
            rows.append(_Row(row[0].strip(), names, where))
    return rows


def read_json_labels(path: Path) -> list[_Row]:
    """Entries of a JSON labels file ``{"<path>": ["class", ...]}``, each with its line (duplicates kept)."""
    text = read_text(path)
    try:
        pairs = json.loads(text, object_pairs_hook=lambda kv: kv)
    except json.JSONDecodeError as e:
        raise PrepareError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
    if not isinstance(pairs, list) or (pairs and not isinstance(pairs[0], tuple)):
        raise PrepareError(f'{path}: expected a JSON object {{"<image path>": ["class", ...], ...}}')
    rows: list[_Row] = []
    pos = 0
    for key, value in pairs:
        at = text.find(json.dumps(key, ensure_ascii=False), pos)  # the key's place, for the line number
        if at < 0:
            at = text.find(json.dumps(key), pos)
        line = text.count("\n", 0, at) + 1 if at >= 0 else None
        pos = at + 1 if at >= 0 else pos
        where = f"{path}:{line}" if line else str(path)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise PrepareError(f"{where}: the value of {key!r} must be a list of class names, found {value!r}")
        rows.append(_Row(key, tuple(dict.fromkeys(v.strip() for v in value if v.strip())), where))
    return rows


def folder_labels(files: Sequence[str], images: Path) -> tuple[list[_Row], list[Problem]]:
    """``--labels-from-folders``: the first folder of each path is its class; images at the top are errors."""
    rows, problems = [], []
    for rel in files:
        parts = PurePosixPath(rel).parts
        if len(parts) < 2:
            problems.append(
                Problem(
                    image_id(rel),
                    str(images / rel),
                    "image is not inside a class folder (--labels-from-folders: the first folder under "
                    "--images names the class); move it into one, or give a labels CSV",
                )
            )
            continue
        rows.append(_Row(rel, (parts[0],), str(images / rel)))
    return rows, problems


def name_labels(inp: _Input, tags: NameTags, fix: str) -> None:
    """Labels from the tags in the file names (:mod:`clustercam_pl.data.name_tags`): one row per tagged
    image. An image without a tag takes the classes of its mask when it has one (a release's val/test
    images); without a mask, and for a malformed tag, it is a problem naming the file, the pattern and ``fix``."""
    for rel in inp.files:
        i = inp.id_of_path[rel]
        if i in inp.from_mask:  # labelled by its mask already (a release's val/test image)
            continue
        stem = PurePosixPath(rel).stem
        try:
            present = parse_name_tag(tags, stem, inp.names, fix)
        except NameTagError as e:
            mask = inp.mask_source(i)
            if tags.pattern.search(stem) is None and mask is not None and mask.is_file():
                inp.from_mask.add(i)
            else:
                inp.problems.append(Problem(i, str(inp.images / rel), str(e)))
            continue
        inp.rows.append(_Row(rel, tuple(inp.names[c] for c in present), str(inp.images / rel)))


def _close(name: str, classes: Sequence[str]) -> str:
    match = difflib.get_close_matches(name, classes, n=1)
    return f"did you mean {match[0]!r}? " if match else ""


def _listing(classes: Sequence[str]) -> str:
    more = f", ... ({len(classes)} in all)" if len(classes) > _SHOWN_NAMES else ""
    return ", ".join(classes[:_SHOWN_NAMES]) + more


# -------------------------------------------------------------------------------------------- splits
def split_by_class(
    labels: dict[str, list[int]], num_classes: int, fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """(train, val) ids: each class sends ``round(fraction * n)`` of its n images to val (at least 1 when
    n >= 2, never all), rarest class first, so rare classes appear in val; negatives are split alike.

    A class's images not drawn for val go to train at once, so a later (commoner) class does not pull
    more of them into val. Deterministic in ``seed``.
    """
    if not 0.0 < fraction < 1.0:
        raise PrepareError(f"--val-fraction must be between 0 and 1 (exclusive), got {fraction}")
    rng = random.Random(seed)
    ids = sorted(labels)
    rng.shuffle(ids)
    by_class: list[list[str]] = [[] for _ in range(num_classes)]
    for i in ids:
        for c in labels[i]:
            by_class[c].append(i)
    val_count = [0] * num_classes
    where: dict[str, str] = {}
    for c in sorted(range(num_classes), key=lambda c: (len(by_class[c]), c)):
        n = len(by_class[c])
        target = min(n - 1, max(1, round(fraction * n))) if n >= 2 else 0
        for i in by_class[c]:
            if i in where:
                continue
            if val_count[c] < target:
                where[i] = "val"
                for cc in labels[i]:
                    val_count[cc] += 1
            else:
                where[i] = "train"
    negatives = [i for i in ids if not labels[i]]
    n_val = round(fraction * len(negatives))
    for k, i in enumerate(negatives):
        where[i] = "val" if k < n_val else "train"
    train = sorted(i for i in ids if where[i] == "train")
    val = sorted(i for i in ids if where[i] == "val")
    if not val or not train:
        raise PrepareError(
            f"--val-fraction {fraction} leaves {len(train)} training and {len(val)} validation images of "
            f"{len(ids)}: choose another fraction, or give the splits with --splits DIR"
        )
    return train, val


def read_split_files(
    split_dir: Path, known: dict[str, str], id_of_path: dict[str, str]
) -> tuple[dict[str, list[str]], list[Problem]]:
    """``--splits DIR``: ids of train.txt, val.txt (test.txt); unknown or repeated lines are problems,
    an image in two splits is refused (train and val must not share an image).

    ``known``: id -> image file of the labelled images; ``id_of_path``: every image path -> id.
    """
    require_path(split_dir, "splits folder (--splits)")
    splits: dict[str, list[str]] = {}
    first: dict[str, str] = {}  # id -> where it was first listed
    problems: list[Problem] = []
    clashes = []
    for name in SPLIT_FILES:
        path = split_dir / f"{name}.txt"
        if not path.is_file():
            if name == "test":
                continue
            raise PrepareError(f"split file not found: {path} (--splits DIR needs train.txt and val.txt)")
        ids: list[str] = []
        for n, line in enumerate(read_text(path).splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            rel = _normalise(line)
            i = id_of_path.get(rel) if rel is not None else None
            if i is None and rel is not None and image_id(rel) in known:
                i = image_id(rel)  # listed without (or with another) suffix
            if i is None:
                problems.append(
                    Problem(line.strip(), where, f"{where}: {line.strip()!r} is not an image under --images")
                )
                continue
            if i in first:
                if first[i].startswith(str(path)):
                    problems.append(Problem(i, where, f"{where}: {line.strip()!r} is listed twice (first {first[i]})"))
                else:
                    clashes.append(f"{i} ({first[i]} and {where})")
                continue
            first[i] = where
            ids.append(i)
        splits[name] = ids
    if clashes:
        more = f" ... and {len(clashes) - 10} more" if len(clashes) > 10 else ""
        raise PrepareError(
            f"{len(clashes)} image(s) are in two split files (a split must not share an image with "
            f"another): {'; '.join(clashes[:10])}{more}"
        )
    return splits, problems


# --------------------------------------------------------------------------------------- per image
@dataclass(frozen=True)
class MaskValues:
    """What the values of a source mask mean: with a background class, 0 background and i = class i (1..K);
    without one (a histopathology release), c = class c (0..K-1). ``void`` values are stored as 255
    (ignore) in the prepared root; any other value is refused naming the file."""

    num_classes: int
    has_background: bool = True
    void: tuple[int, ...] = (IGNORE_INDEX,)
    binary: bool = False  # --binary-masks: 255 is class 1 of a one-class dataset (with background only)

    def table(self) -> np.ndarray:
        """int16 (256,): source value -> stored value, -1 for a value that is not allowed."""
        lut = np.full(256, -1, dtype=np.int16)  # (256,)
        n = num_labels(1 if self.binary else self.num_classes, self.has_background)
        lut[:n] = np.arange(n)
        for v in self.void:
            lut[v] = IGNORE_INDEX
        if self.binary:
            lut[IGNORE_INDEX] = 1
        return lut

    def expected(self) -> str:
        """The allowed source values, for messages."""
        void = ", ".join(map(str, self.void))
        if self.binary:
            return "0, 1 and 255 (--binary-masks)"
        if self.has_background:
            return f"0..{self.num_classes} and {void}"
        return f"0..{self.num_classes - 1} (the classes) and {void} (void)"


@dataclass(frozen=True)
class _Task:
    image_id: str
    image: str
    mask_src: str | None
    out_mask: str | None
    values: MaskValues
    full_decode: bool


def _process(task: _Task) -> dict[str, Any]:
    """Check one image and its mask; write the mask as an index PNG. Runs in a worker process.

    Returns the problems, the mask's raw pixel counts of values 1..K and 255 (for the 0/255 check)
    and its histogram over the stored values (0..K with a background, 0..K-1 without) and 255.
    """
    res: dict[str, Any] = {"id": task.image_id, "problems": [], "hist": None, "raw_fg": 0, "raw_ignore": 0}
    try:
        h, w = image_size(task.image, full_decode=task.full_decode)
    except ImageReadError as e:
        res["problems"].append(Problem(task.image_id, task.image, str(e)))
        return res
    if task.mask_src is None or task.out_mask is None:
        return res
    try:
        raw = read_mask(task.mask_src)  # (H, W) uint8
    except ImageReadError as e:
        res["problems"].append(Problem(task.image_id, task.mask_src, str(e)))
        return res
    if raw.shape != (h, w):
        res["problems"].append(
            Problem(
                task.image_id,
                task.mask_src,
                f"mask size {raw.shape[1]}x{raw.shape[0]} != image {w}x{h} ({task.image})",
            )
        )
        return res
    values, k = task.values, task.values.num_classes
    counts = np.bincount(raw.ravel(), minlength=256)  # (256,) pixels per source value
    lut = values.table()  # (256,)
    bad = np.flatnonzero((counts > 0) & (lut < 0))
    if bad.size:
        res["problems"].append(
            Problem(task.image_id, task.mask_src, f"mask values {bad[:10].tolist()} outside {values.expected()}")
        )
        return res
    if values.has_background:
        res["raw_fg"] = int(counts[1 : k + 1].sum())
        res["raw_ignore"] = int(counts[IGNORE_INDEX])
    mask = lut[raw].astype(np.uint8)  # (H, W) stored values
    stored = np.bincount(mask.ravel(), minlength=256)  # (256,)
    n = num_labels(k, values.has_background)
    res["hist"] = [int(stored[v]) for v in range(n)] + [int(stored[IGNORE_INDEX])]
    write_index_png(task.out_mask, mask, background=values.has_background)
    return res


# ---------------------------------------------------------------------------------------- the command
@dataclass
class _Input:
    """What steps 1-3 of :func:`prepare_folder` learn about the input; ``problems`` grows along the way."""

    images: Path
    masks_dir: Path | None
    files: list[str]  # image paths relative to `images`
    by_id: dict[str, list[str]]  # id -> its files (more than one is a problem)
    id_of_path: dict[str, str]
    rows: list[_Row] = field(default_factory=list)
    labels_desc: str = ""  # where the labels come from, for messages and the report
    negative_hint: str = ""  # how a negative image is written in the labels file
    names: tuple[str, ...] = ()
    label_of: dict[str, list[int]] = field(default_factory=dict)  # id -> class indices
    row_at: dict[str, str] = field(default_factory=dict)  # id -> file:line of its row
    problems: list[Problem] = field(default_factory=list)
    mask_files: dict[str, Path] | None = None  # id -> its mask where not <masks_dir>/<id>.png (a release)
    from_mask: set[str] = field(default_factory=set)  # ids whose labels are the classes of their mask
    dataset: str = DATASET  # the kind written to the manifest
    has_background: bool = True  # mask value 0 is background (else c = class c)
    void: tuple[int, ...] = (IGNORE_INDEX,)  # source mask values stored as 255

    def mask_source(self, i: str) -> Path | None:
        """Where the mask of image ``i`` would be (it may not exist); None without any masks."""
        if self.mask_files is not None:
            return self.mask_files.get(i)
        return None if self.masks_dir is None else self.masks_dir / f"{i}.png"


def _input_of(images: Path, files: list[str], masks_dir: Path | None, id_of: Callable[[str], str] = image_id
              ) -> _Input:
    """The images found (paths relative to ``images``) by id; two files with one id are a problem of that id."""
    by_id: dict[str, list[str]] = {}
    for rel in files:
        by_id.setdefault(id_of(rel), []).append(rel)
    inp = _Input(images, masks_dir, files, by_id, {rel: id_of(rel) for rel in files})
    for i, rels in by_id.items():
        if len(rels) > 1:
            inp.problems.append(Problem(
                i, str(images / rels[0]),
                f"image files {', '.join(rels)} have the same id {i!r} (masks and outputs are named by the path "
                "without its suffix): rename or remove all but one",
            ))
    return inp


def _scan(images: Path, out: Path, masks_dir: Path | None) -> _Input:
    """1a. The images on disk."""
    files = scan_images(images, exclude=[out] + ([masks_dir] if masks_dir is not None else []))
    if not files:
        raise PrepareError(f"no image ({', '.join(IMAGE_EXTENSIONS)}) found under {images}")
    return _input_of(images, files, masks_dir)


def _class_names(inp: _Input, classes: str | Path | None, csv_labels: bool, label_sep: str) -> tuple[str, ...]:
    """1b. The class list: ``--classes`` (checked against the CSV separator) or the names in the labels."""
    if classes is None:
        names = tuple(sorted({n for r in inp.rows for n in r.names if n.lower() != "background"}))
        if not names:
            raise PrepareError(f"the labels ({inp.labels_desc}) name no class: every image is a negative")
        return names
    names = read_classes_file(classes)
    bad_sep = [c for c in names if label_sep in c] if csv_labels else []
    if bad_sep:
        raise PrepareError(
            f"{classes}: class name {bad_sep[0]!r} contains the label separator {label_sep!r}: "
            "pass another one, e.g. --label-sep '|'"
        )
    return names


def _read_labels(
    inp: _Input, labels: str | Path | None, classes: str | Path | None, label_sep: str, binary_masks: bool,
    tags: NameTags | None = None, fix: str = "",
) -> None:
    """1. The labels rows (a file, the name tags with ``tags``, or the folder names when ``labels`` is None),
    the classes, and each image's class indices; a row naming no image, a second row or an unknown class
    is a problem."""
    if tags is not None:
        if classes is None and tags.classes is None:
            raise PrepareError(
                f"--labels-from-name {tags.spec!r} needs --classes FILE: the digits of a tag are positional, "
                "line i of the file names the class of digit i"
            )
        inp.names = read_classes_file(classes) if classes is not None else tags.classes or ()
        inp.labels_desc = f"tags in the file names ({tags.spec})"
        name_labels(inp, tags, fix)
    elif labels is None:
        inp.rows, row_problems = folder_labels(inp.files, inp.images)
        inp.problems += row_problems
        inp.labels_desc = f"folders under {inp.images}"
    else:
        labels_path = require_path(Path(labels), "labels file (--labels)")
        is_json = labels_path.suffix.lower() == ".json"
        inp.rows = read_json_labels(labels_path) if is_json else read_csv_labels(labels_path, label_sep)
        inp.negative_hint = '"{}": []' if is_json else "{},"
        inp.labels_desc = str(labels_path)
    csv_labels = tags is None and labels is not None and Path(labels).suffix.lower() != ".json"
    names = inp.names = inp.names or _class_names(inp, classes, csv_labels, label_sep)
    if binary_masks and len(names) != 1:
        raise PrepareError(
            f"--binary-masks reads mask value 255 as class 1 and needs exactly one class, but there are "
            f"{len(names)}: {_listing(names)}"
        )
    index = {n: c for c, n in enumerate(names)}
    source = classes if classes is not None else "the labels"
    for r in inp.rows:
        rel = _normalise(r.path)
        i = inp.id_of_path.get(rel) if rel is not None else None
        if i is None and rel is not None and image_id(rel) in inp.by_id:
            i = image_id(rel)  # written without (or with another) suffix
        if i is None:
            what = "must be relative to --images" if rel is None else "names no image file"
            inp.problems.append(
                Problem(image_id(rel or r.path), r.where, f"{r.where}: {r.path!r} {what} ({inp.images})"))
            continue
        if i in inp.row_at:
            inp.problems.append(Problem(i, r.where, f"{r.where}: second row for {r.path!r} (first at {inp.row_at[i]})"))
            continue
        inp.row_at[i] = r.where
        for n in r.names:
            if n.lower() == "background":
                inp.problems.append(Problem(i, r.where, f"{r.where}: 'background' is not a class (every image has "
                                            "background; a negative image has empty labels): remove it"))
            elif n not in index:
                inp.problems.append(Problem(i, r.where, f"{r.where}: class {n!r} is not in {source} "
                                            f"({_close(n, names)}it lists: {_listing(names)})"))
        inp.label_of[i] = sorted({index[n] for n in r.names if n in index})


def _make_splits(
    inp: _Input, splits: str | Path | None, val_fraction: float | None, seed: int, check_rows: bool
) -> tuple[dict[str, list[str]], str]:
    """2. The split of every image (``--splits DIR`` or ``--val-fraction``) and how it was made; an image
    of a split without a labels row is a problem, and problems of images in no split are dropped."""
    if splits is not None:
        split_ids, split_problems = read_split_files(Path(splits), inp.by_id, inp.id_of_path)
        inp.problems += split_problems
        split_desc = f"--splits {splits}"
    else:
        assert val_fraction is not None
        labels = {i: inp.label_of.get(i, []) for i in inp.by_id}
        train, val = split_by_class(labels, len(inp.names), float(val_fraction), seed)
        split_ids = {"train": train, "val": val}
        split_desc = f"--val-fraction {val_fraction} --seed {seed}"
    used = {i for ids in split_ids.values() for i in ids}
    if check_rows:  # (from folders or name tags, an image without a label is reported already)
        for i in sorted(used - set(inp.row_at) - inp.from_mask):
            rel = inp.by_id[i][0]
            inp.problems.append(Problem(
                i, str(inp.images / rel),
                f"no row for it in {inp.labels_desc} (a negative image, with no class, is the row "
                f"`{inp.negative_hint.format(rel)}`)",
            ))
    # Images that exist but are in no split are not prepared, so their problems do not count.
    inp.problems = [p for p in inp.problems if p.image_id in used or p.image_id not in inp.by_id]
    return split_ids, split_desc


def _mask_tasks(
    inp: _Input, split_ids: dict[str, list[str]], out: Path, binary_masks: bool, full_decode: bool
) -> tuple[list[_Task], dict[str, bool]]:
    """3a. One task per image of a split, with its mask where the split has masks (a split has masks when
    any of its images has one; then each needs one)."""
    masks_dir = inp.masks_dir
    def has_mask(i: str) -> bool:  # a release lists the masks it must have; a folder has those on disk
        src = inp.mask_source(i)
        return src is not None and (inp.mask_files is not None or src.is_file())

    has_masks = {name: any(map(has_mask, ids)) for name, ids in split_ids.items()}
    if masks_dir is not None and inp.mask_files is None and not any(has_masks.values()):
        first = next((ids[0] for ids in split_ids.values() if ids), "scans/001")
        raise PrepareError(
            f"--masks {masks_dir}: no image of any split has a mask; a mask is <image path without its "
            f"suffix>.png under the mask folder, e.g. {masks_dir / f'{first}.png'}"
        )
    values = MaskValues(len(inp.names), inp.has_background, inp.void, binary_masks)
    clash = [v for v in inp.void if v < num_labels(len(inp.names), inp.has_background)]
    if clash and masks_dir is not None:
        cls = clash[0] - class_offset(inp.has_background)
        what = "background" if cls < 0 else f"class {inp.names[cls]!r}"
        hint = ", or add --no-background if the masks have no background class" if inp.has_background else ""
        raise PrepareError(f"--void {clash[0]} is also the mask value of {what}: give the value that marks only "
                           f"excluded pixels{hint}")
    tasks = []
    for name, ids in split_ids.items():
        for i in ids:
            src = inp.mask_source(i) if has_masks[name] else None
            if has_masks[name] and (src is None or not src.is_file()):
                inp.problems.append(Problem(i, str(src or inp.images / inp.by_id[i][0]),
                                            f"missing mask (other images of split {name!r} have one: "
                                            "every image of a split needs a mask, or none does)"))
                src = None
            out_mask = str(out / MASK_DIR / f"{i}.png") if has_masks[name] else None
            tasks.append(_Task(i, str(inp.images / inp.by_id[i][0]), None if src is None else str(src), out_mask,
                               values, full_decode))
    return tasks, has_masks


def _check_images(
    inp: _Input, split_ids: dict[str, list[str]], out: Path, *, binary_masks: bool, full_decode: bool,
    workers: int, progress: bool,
) -> tuple[dict[str, bool], dict[str, list[int]]]:
    """3. Every image of a split (and its mask) through the workers, which write the masks; returns which
    splits have masks and each mask's histogram. Masks of only 0 and 255 are refused with the fix."""
    tasks, has_masks = _mask_tasks(inp, split_ids, out, binary_masks, full_decode)
    hist: dict[str, list[int]] = {}
    raw_fg = raw_ignore = 0
    for r in run_tasks(_process, tasks, workers=workers, desc="images", progress=progress):
        inp.problems += r["problems"]
        if r["hist"] is not None:
            hist[r["id"]] = r["hist"]
            raw_fg += r["raw_fg"]
            raw_ignore += r["raw_ignore"]
    remove_partials([out / MASK_DIR])  # of a killed earlier run
    for i in inp.from_mask & set(hist):  # an untagged image with a mask: the classes of its mask
        inp.label_of[i] = [c for c in range(len(inp.names)) if hist[i][c + class_offset(inp.has_background)] > 0]
    if hist and raw_fg == 0 and raw_ignore > 0 and not binary_masks:
        names, k = inp.names, len(inp.names)
        values = "0 background, i = class i of the class list, 255 ignore"
        fix = (
            f"Rerun with --binary-masks to read 255 as class 1 ({names[0]!r}), or fix the files ({values})"
            if k == 1
            else f"Fix the files ({values}); --binary-masks is for a dataset of one class"
        )
        raise PrepareError(
            f"the masks under {inp.masks_dir} hold only the values 0 and 255, no pixel of a class 1..{k}: the "
            f"foreground looks stored as 255, which means 'ignore'. {fix}"
        )
    return has_masks, hist


def _mask_stats(
    inp: _Input, kept: dict[str, list[str]], has_masks: dict[str, bool], hist: dict[str, list[int]]
) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """Per split with masks: the pixel fraction of each class (and of ignore), and how many images'
    labels differ from the classes in their masks."""
    names, k, o = inp.names, len(inp.names), class_offset(inp.has_background)
    pixel_fraction: dict[str, dict[str, float]] = {}
    mismatch: dict[str, int] = {}
    for name, ids in kept.items():
        if not has_masks[name]:
            continue
        total = np.sum([hist[i] for i in ids], axis=0)  # (K + o + 1,): stored values (0..K or 0..K-1), ignore
        valid = max(int(total[:-1].sum()), 1)
        pixel_fraction[name] = {
            **({"background": float(total[0]) / valid} if inp.has_background else {}),
            **{n: float(total[c + o]) / valid for c, n in enumerate(names)},
            "ignored_of_all_pixels": float(total[-1]) / max(int(total.sum()), 1),
        }
        mismatch[name] = sum([c for c in range(k) if hist[i][c + o] > 0] != inp.label_of[i] for i in ids)
    return pixel_fraction, mismatch


def _write_prepared(
    inp: _Input, out: Path, kept: dict[str, list[str]], has_masks: dict[str, bool], report: dict[str, Any]
) -> None:
    """4. Split lists, labels, the image file map, the report and, last, the manifest."""
    for name, ids in kept.items():
        write_split_list(out / "splits" / f"{name}.txt", ids)
    good = sorted({i for ids in kept.values() for i in ids})
    write_label_file(out / LABEL_FILE, {i: inp.label_of[i] for i in good}, inp.names, f"folder: {inp.labels_desc}")
    write_image_files(out / IMAGE_FILES, {i: inp.by_id[i][0] for i in good})
    write_report(out, report)
    infos = {
        name: SplitInfo(
            name=name,
            list_file=f"splits/{name}.txt",
            image_dir=relative_to_root(inp.images, out),
            image_ext="",
            mask_dir=MASK_DIR if has_masks[name] else None,
            has_labels=True,
            num_images=len(ids),
            image_files=IMAGE_FILES,
        )
        for name, ids in kept.items()
    }
    write_manifest(out, Manifest(out, inp.dataset, inp.names, infos, {"labels": LABEL_FILE}, "labels",
                                 has_background=inp.has_background))


def _make_report(
    inp: _Input, split_ids: dict[str, list[str]], kept: dict[str, list[str]], has_masks: dict[str, bool],
    hist: dict[str, list[int]], settings: dict[str, Any],
) -> dict[str, Any]:
    """The content of ``prepare_report.json`` (counts per split and class, negatives, mask statistics)."""
    names, k = inp.names, len(inp.names)
    counts = {name: count_classes(ids, inp.label_of, k) for name, ids in kept.items()}
    pixel_fraction, mismatch = _mask_stats(inp, kept, has_masks, hist)
    missing = {name: [n for n, c in zip(names, counts[name], strict=True) if c == 0] for name in kept}
    return {
        "dataset": inp.dataset,
        "classes": list(names),
        "has_background": inp.has_background,
        "images": str(inp.images),
        "labels": inp.labels_desc,
        "masks": str(inp.masks_dir) if inp.masks_dir is not None else (
            None if not inp.mask_files else sorted({str(p.parent) for p in inp.mask_files.values()})),
        **settings,
        "images_per_split": {name: len(ids) for name, ids in kept.items()},
        "images_per_class": {name: dict(zip(names, c, strict=True)) for name, c in counts.items()},
        "negatives_per_split": {name: sum(not inp.label_of[i] for i in ids) for name, ids in kept.items()},
        "splits_with_masks": [name for name in kept if has_masks[name]],
        "mask_pixel_fraction": pixel_fraction,
        "label_vs_mask_mismatches": mismatch,
        "classes_without_images": {name: v for name, v in missing.items() if v},
        "images_in_no_split": len(inp.by_id) - len({i for ids in split_ids.values() for i in ids}),
    }


def _log_summary(report: dict[str, Any], out: Path) -> None:
    """The class table, negatives, mask pixels and warnings of a finished run."""
    names = report["classes"]
    sizes = report["images_per_split"]
    counts = {s: list(per.values()) for s, per in report["images_per_class"].items()}
    log.info(class_table(names, counts, sizes, {"negatives": list(report["negatives_per_split"].values())}))
    for name, frac in report["mask_pixel_fraction"].items():
        shown = ", ".join(f"{n} {100 * v:.1f}%" for n, v in frac.items() if n != "ignored_of_all_pixels")
        log.info(f"{name} mask pixels: {shown} (ignored: {100 * frac['ignored_of_all_pixels']:.1f}% of all)")
    missing = report["classes_without_images"]
    if missing.get("train"):
        log.warning(f"classes without a training image (they cannot be learned): {', '.join(missing['train'])}")
    if missing.get("val"):
        log.info(f"note: classes without a validation image: {', '.join(missing['val'])}")
    if report["images_in_no_split"]:
        log.info(f"note: {report['images_in_no_split']} image(s) under {report['images']} are in no split file "
                 "(not prepared)")
    log.info(f"prepared {sum(sizes.values())} images, {len(names)} class(es), under {out}; train with "
             f"`python -m clustercam_pl.train +experiment={report['dataset']}_vits data.data_root={out}`")


def prepare_folder(
    images: str | Path,
    out: str | Path,
    *,
    labels: str | Path | None = None,
    labels_from_folders: bool = False,
    labels_from_name: str | None = None,
    classes: str | Path | None = None,
    masks: str | Path | None = None,
    binary_masks: bool = False,
    no_background: bool = False,
    void_values: Sequence[int] = (IGNORE_INDEX,),
    label_sep: str = ";",
    val_fraction: float | None = None,
    seed: int = 0,
    splits: str | Path | None = None,
    skip_bad: bool = False,
    full_decode: bool = True,
    workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Check an image folder with labels (and masks), write the prepared layout under ``out``.

    ``labels_from_name``: the labels are tags in the file names, ``luad``, ``bcss`` or a regex with one
    group (:mod:`clustercam_pl.data.name_tags`); an image without a tag takes the classes of its mask,
    and without a mask it is refused. ``no_background``: the data has no background class, mask value c
    is class c (line c + 1 of the class list; the manifest says ``has_background: false``).
    ``void_values``: the mask values of excluded pixels, stored as 255 (e.g. 4 in a histopathology release).

    Returns the report (also written to ``out/prepare_report.json``); the summary is logged.

    Raises:
        FileNotFoundError: ``images``, ``labels``, ``classes``, ``masks`` or ``splits`` is missing.
        PrepareError: a file's structure is wrong (named with file:line), or bad items and not ``skip_bad``.
    """
    images = require_path(Path(images), "image folder (--images)")
    out = Path(out)
    if (labels is not None) + labels_from_folders + (labels_from_name is not None) != 1:
        raise PrepareError("give exactly one of --labels FILE, --labels-from-folders and --labels-from-name PATTERN")
    if (val_fraction is None) == (splits is None):
        raise PrepareError("give exactly one of --val-fraction F (with --seed S) and --splits DIR")
    if binary_masks and no_background:
        raise PrepareError("--binary-masks reads 0 as background: it cannot go with --no-background")
    bad_void = [v for v in void_values if not 0 <= v <= 255]
    if bad_void:
        raise PrepareError(f"--void {bad_void[0]} is not a mask value (0..255)")
    tags = None if labels_from_name is None else name_tags(labels_from_name)
    masks_dir = require_path(Path(masks), "mask folder (--masks)") if masks is not None else None
    _unprepare(out)

    inp = _scan(images, out, masks_dir)
    inp.has_background, inp.void = not no_background, tuple(void_values)
    fix = "rename the file, or give the labels in a CSV with --labels instead"
    _read_labels(inp, None if labels_from_folders else labels, classes, label_sep, binary_masks, tags, fix)
    split_ids, split_desc = _make_splits(inp, splits, val_fraction, seed, check_rows=labels is not None)
    return _finish(inp, split_ids, out, settings={"binary_masks": binary_masks, "splits_from": split_desc},
                   binary_masks=binary_masks, skip_bad=skip_bad, full_decode=full_decode, workers=workers,
                   progress=progress)


def _unprepare(out: Path) -> None:
    """``out`` reads as "not prepared" until this run has finished (its manifest is written last)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)


def _finish(
    inp: _Input, split_ids: dict[str, list[str]], out: Path, *, settings: dict[str, Any], binary_masks: bool,
    skip_bad: bool, full_decode: bool, workers: int, progress: bool,
) -> dict[str, Any]:
    """3-4. Check every image and mask (writing the masks), refuse or leave out the bad ones, write the rest."""
    has_masks, hist = _check_images(inp, split_ids, out, binary_masks=binary_masks, full_decode=full_decode,
                                    workers=workers, progress=progress)
    problems = sorted(inp.problems, key=lambda p: (p.image_id, p.path))
    bad = handle_problems(problems, skip_bad)

    kept = {name: [i for i in ids if i not in bad] for name, ids in split_ids.items()}
    for name, ids in kept.items():
        if not ids and name in ("train", "val"):
            raise PrepareError(f"split {name!r} has no image left after leaving out the bad ones")
    report = _make_report(inp, split_ids, kept, has_masks, hist, settings)
    report["skipped"] = problems if skip_bad else []
    _write_prepared(inp, out, kept, has_masks, report)
    _log_summary(report, out)
    return report


# ------------------------------------------------- a release with a fixed layout: `prepare luad`, `prepare bcss`
@dataclass(frozen=True)
class Release:
    """The layout of a histopathology release as published (LUAD-HistoSeg, BCSS-WSSS)::

        <root>/train/<name>[tag].png       training patches, the image-level label in the name
        <root>/val/img/<name>.png          (and test/) patches with pixel labels:
        <root>/val/mask/<name>.png         palette PNGs, index c = class c, the void index = excluded

    ``train_dirs``/``val_dirs``: the names the training/validation folder has in the copies in use
    (``training/``, ``valid/``); the first that exists is read.
    """

    dataset: str
    tags: NameTags
    void: tuple[int, ...]
    train_dirs: tuple[str, ...] = ("train", "training")
    val_dirs: tuple[str, ...] = ("val", "valid")

    def split_dirs(self, root: Path) -> dict[str, Path]:
        """{split: its image folder} of the release at ``root``; a missing train or val folder is refused."""
        found: dict[str, Path] = {}
        for split, names, sub in (("train", self.train_dirs, ""), ("val", self.val_dirs, "img"),
                                  ("test", ("test",), "img")):
            folder = next((root / n / sub for n in names if (root / n / sub).is_dir()), None)
            if folder is None and split != "test":
                tried = " or ".join(str(root / n / sub) for n in names)
                holds = "the tagged training patches" if split == "train" else "img/ and mask/"
                raise PrepareError(f"{tried} not found: --{self.dataset}-root must be the unpacked {self.dataset} "
                                   f"release, the folder holding {names[0]}/ with {holds}")
            if folder is not None:
                found[split] = folder
        return found


def prepare_release(
    release: Release,
    root: str | Path,
    out: str | Path,
    *,
    skip_bad: bool = False,
    full_decode: bool = True,
    workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Prepare a release laid out as :class:`Release` under ``out``, with the folder steps and checks.

    Ids are ``<split>/<file name without suffix>``; training labels are the name tags, val/test labels
    the classes of their masks; masks are stored with class c as value c and the void value(s) as 255.

    Raises:
        FileNotFoundError: ``root`` is missing.
        PrepareError: the layout is not the release's, or bad items (a training name without a tag or with
            the wrong number of digits, a mask with another value or size) and not ``skip_bad``.
    """
    root = require_path(Path(root), f"{release.dataset} release folder (--{release.dataset}-root)")
    out = Path(out)
    dirs = release.split_dirs(root)
    _unprepare(out)
    files: list[str] = []
    split_of: dict[str, str] = {}
    for split, folder in dirs.items():
        for rel in scan_images(folder, exclude=[out]):
            path = (folder / rel).relative_to(root).as_posix()
            files.append(path)
            split_of[path] = split
    if not any(split_of[f] == "train" for f in files):
        raise PrepareError(f"no training image ({', '.join(IMAGE_EXTENSIONS)}) found under {dirs['train']}")

    def id_of(rel: str) -> str:
        return f"{split_of[rel]}/{PurePosixPath(rel).stem}"

    inp = _input_of(root, files, None, id_of)
    inp.dataset, inp.has_background, inp.void = release.dataset, False, release.void
    inp.mask_files = {  # val/img/<name>.png -> val/mask/<name>.png; their labels are the classes of the mask
        id_of(rel): root / rel.replace("/img/", "/mask/", 1)
        for rel in files if split_of[rel] != "train"
    }
    inp.from_mask = set(inp.mask_files)
    fix = (f"a training patch of the {release.dataset} release is named like {release.tags.example!r}; move "
           f"other files out of {dirs['train']}")
    _read_labels(inp, None, None, ";", False, release.tags, fix)
    split_ids = {split: sorted(i for i in inp.by_id if i.startswith(f"{split}/")) for split in dirs}
    return _finish(inp, split_ids, out, settings={"splits_from": f"the release's folders under {root}"},
                   binary_masks=False, skip_bad=skip_bad, full_decode=full_decode, workers=workers,
                   progress=progress)


def add_release_arguments(p: argparse.ArgumentParser, release: Release) -> None:
    """The options of ``prepare luad`` / ``prepare bcss`` (the shared ones are added by the command)."""
    p.add_argument(f"--{release.dataset}-root", dest="root", required=True,
                   help="the unpacked release: train/ (or training/), val/, test/")
    p.add_argument("--quick", action="store_true", help="check images by header only (misses truncated files)")


def run_release(release: Release, args: argparse.Namespace) -> dict[str, Any]:
    """``prepare luad`` / ``prepare bcss`` with parsed arguments."""
    return prepare_release(release, args.root, args.out, skip_bad=args.skip_bad, full_decode=not args.quick,
                           workers=args.workers, progress=not args.no_progress)


# --------------------------------------------------------------------- the step of `prepare folder`
HELP = "your own images with image-level labels (and optional masks)"
DESCRIPTION = (
    "Check and prepare your own images: image-level labels from a CSV, a JSON, the folder names or tags in the "
    "file names, optional "
    "masks, train/val(/test) splits. Every problem is named with its file."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m clustercam_pl.prepare folder`` (the shared ones are added by the command)."""
    p.add_argument("--images", required=True, help="image folder (any sub-folders)")
    lab = p.add_mutually_exclusive_group(required=True)
    lab.add_argument(
        "--labels",
        help="CSV (UTF-8) with the header `image,labels` (class names separated by --label-sep; empty = negative "
        'image) or JSON {"<image path>": ["class", ...]}; paths relative to --images',
    )
    lab.add_argument(
        "--labels-from-folders",
        action="store_true",
        help="the first folder under --images is the image's (single) class",
    )
    lab.add_argument(
        "--labels-from-name",
        metavar="PATTERN",
        help="labels are tags in the file names: `luad` (name-[1 0 0 1].png), `bcss` (name+0[1101].png) or a "
        "regex with one group around the 0/1 digits, searched in the name without suffix (e.g. '_([01]+)$'); "
        "digit i is class i of --classes (a named form brings its classes). An image without a tag takes the "
        "classes of its mask, without a mask it is refused",
    )
    p.add_argument(
        "--classes", help="one class name per line; line i = class i in masks (default: the names found, sorted)"
    )
    p.add_argument(
        "--masks",
        help="optional masks <image path without suffix>.png: 0 background, i = class i, 255 ignore",
    )
    p.add_argument(
        "--binary-masks", action="store_true", help="one-class masks stored as 0/255: read 255 as class 1"
    )
    p.add_argument(
        "--no-background",
        action="store_true",
        help="no background class (e.g. tissue classes): mask value i is the class on line i + 1 of --classes",
    )
    p.add_argument(
        "--void", type=int, nargs="+", default=[IGNORE_INDEX], metavar="V",
        help="mask value(s) of excluded pixels, stored as 255 (default 255; a histopathology release: 4)",
    )
    p.add_argument("--label-sep", default=";", help="separator of class names in the CSV (default ;)")
    spl = p.add_mutually_exclusive_group(required=True)
    spl.add_argument(
        "--val-fraction", type=float, help="fraction of each class's images for val (rare classes reach val)"
    )
    spl.add_argument("--splits", help="folder with train.txt, val.txt (and test.txt): image paths, one a line")
    p.add_argument("--seed", type=int, default=0, help="seed of the --val-fraction split (default 0)")
    p.add_argument(
        "--quick", action="store_true", help="check images by header only (faster; misses truncated files)"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """``prepare folder`` with parsed arguments."""
    return prepare_folder(
        args.images,
        args.out,
        labels=args.labels,
        labels_from_folders=args.labels_from_folders,
        labels_from_name=args.labels_from_name,
        classes=args.classes,
        masks=args.masks,
        binary_masks=args.binary_masks,
        no_background=args.no_background,
        void_values=args.void,
        label_sep=args.label_sep,
        val_fraction=args.val_fraction,
        seed=args.seed,
        splits=args.splits,
        skip_bad=args.skip_bad,
        full_decode=not args.quick,
        workers=args.workers,
        progress=not args.no_progress,
    )
