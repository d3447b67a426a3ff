"""Class names and the image-level label file.

The label file is JSON, not a pickle: it is human readable, diffable, safe to load from an untrusted
download, and it records the class list it was written for, so loading it for the wrong dataset is an
error instead of a silently shifted label vector::

    {"format": "clustercam_pl.labels", "version": 1, "num_classes": 20,
     "classes": ["aeroplane", ...], "source": "xml",
     "labels": {"2007_000032": [0, 14], ...}}

``labels`` maps an image id to the sorted indices (0-based channels) of the classes present.
The reference code stores the same information as a pickled ``{id: float32[K]}`` in ``cls_labels.npy``;
:func:`import_reference_npy` converts such a file, but only when the caller explicitly allows unpickling.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from clustercam_pl.utils.files import write_text

LABEL_FORMAT = "clustercam_pl.labels"
LABEL_FORMAT_VERSION = 1

# PASCAL VOC 2012, in the official order: mask value c + 1 is channel c.
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip

# MS COCO 2014 "instances" categories sorted by category id. Channel c is COCO_CATEGORY_IDS[c];
# the masks written by `prepare coco` store channel c as value c + 1 (1..80).
COCO_CATEGORY_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31,
    32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57,
    58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87,
    88, 89, 90,
)  # fmt: skip
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie",
    "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
    "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

IGNORE_INDEX = 255
"""Mask value for pixels that are not evaluated (VOC object boundaries, COCO crowd/ambiguous regions)."""


def write_label_file(
    path: str | os.PathLike[str],
    labels: Mapping[str, Iterable[int]],
    classes: Sequence[str],
    source: str,
) -> None:
    """Write ``{image_id: class indices}`` as a label file (atomically: a partial file, then renamed)."""
    path = Path(path)
    k = len(classes)
    clean: dict[str, list[int]] = {}
    for image_id in sorted(labels):
        idx = sorted({int(c) for c in labels[image_id]})
        bad = [c for c in idx if not 0 <= c < k]
        if bad:
            raise ValueError(f"label of {image_id!r} has class index {bad[0]} outside 0..{k - 1}")
        clean[image_id] = idx
    doc = {
        "format": LABEL_FORMAT,
        "version": LABEL_FORMAT_VERSION,
        "num_classes": k,
        "classes": list(classes),
        "source": source,
        "labels": clean,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # One image per line keeps the file greppable and diffs readable.
    head = "".join(f"  {json.dumps(key)}: {json.dumps(doc[key])},\n"
                   for key in ("format", "version", "num_classes", "classes", "source"))
    items = ",".join(f"\n    {json.dumps(i)}: {json.dumps(v)}" for i, v in clean.items())
    write_text(path, "{\n" + head + '  "labels": {' + items + "\n  }\n}\n")


def read_label_file(
    path: str | os.PathLike[str], num_classes: int, classes: Sequence[str] | None = None
) -> dict[str, list[int]]:
    """Read a label file and check it was written for ``num_classes`` classes (and these names).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not a label file, wrong number of classes, other class names, or an index out of range.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"label file {path} is not valid JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != LABEL_FORMAT or "labels" not in doc:
        raise ValueError(f"{path} is not a {LABEL_FORMAT} label file (missing 'format'/'labels' keys)")
    k = doc.get("num_classes")
    if k != num_classes:
        raise ValueError(
            f"label file {path} was written for num_classes={k}, but the dataset has {num_classes} classes"
        )
    if classes is not None and list(doc.get("classes", [])) != list(classes):
        raise ValueError(f"label file {path} lists other class names than the dataset: {doc.get('classes')}")
    out: dict[str, list[int]] = {}
    for image_id, idx in doc["labels"].items():
        if not isinstance(idx, list) or not all(isinstance(c, int) and 0 <= c < k for c in idx):
            raise ValueError(
                f"label file {path}: entry {image_id!r} = {idx!r} is not a list of ints in 0..{k - 1}"
            )
        out[str(image_id)] = idx
    return out


# ------------------------------------------------------------------------------ label values
# The one home of the label-value convention of masks, pseudo labels, exported labels and predictions:
# with a background class (VOC, COCO, most folder datasets) value 0 is background and class c is c + 1
# (K + 1 values); without one (histopathology, remote sensing with clutter ignored) class c is value c
# (K values). Void is IGNORE_INDEX in both. Everything that counts or names label values asks here.


def class_offset(background: bool = True) -> int:
    """The label value of class 0: 1 with a background class (value 0), 0 without."""
    return 1 if background else 0


def num_labels(num_classes: int, background: bool = True) -> int:
    """The number of label values (decoder outputs, confusion-matrix size): K + 1 with background, K without."""
    return num_classes + class_offset(background)


def label_names(classes: Sequence[str], background: bool = True) -> list[str]:
    """The name of each label value: ``["background", *classes]`` with background, ``classes`` without."""
    return ["background", *classes] if background else list(classes)


def label_range(num_classes: int, background: bool = True) -> str:
    """The label values, for messages: ``"0..K"`` with a background class, ``"0..K-1"`` without."""
    return f"0..{num_labels(num_classes, background) - 1}"


def label_convention(background: bool = True) -> str:
    """The label convention in words, for messages."""
    return "0 background, c + 1 class c" if background else "c = class c, no background class"


def mask_classes(mask: np.ndarray, num_classes: int, background: bool = True) -> list[int]:
    """Classes present in a class-index mask (values c + 1 -> c, or c -> c without background; 255 is no class)."""
    present = np.bincount(mask.ravel(), minlength=256) > 0  # (256,)
    first = class_offset(background)
    return np.flatnonzero(present[first : num_classes + first]).tolist()


def mask_values_outside(mask: np.ndarray, num_classes: int, background: bool = True) -> list[int]:
    """Values of a uint8 class-index mask that are neither a label value (:func:`num_labels`) nor
    IGNORE_INDEX (sorted; [] if none).

    Such a mask must never be scored: the confusion matrix would break or silently drop those pixels.
    """
    n = num_labels(num_classes, background)
    if int(mask.max()) < n:  # a mask without ignore pixels: one max
        return []
    present = np.bincount(mask.ravel(), minlength=256) > 0  # (256,) values present
    present[:n] = False
    present[IGNORE_INDEX] = False
    return np.flatnonzero(present).tolist()


def multi_hot(indices: Iterable[int], num_classes: int) -> np.ndarray:
    """Class indices -> float32 (K,) multi-hot vector."""
    v = np.zeros(num_classes, dtype=np.float32)  # (K,)
    for c in indices:
        v[c] = 1.0
    return v


def import_reference_npy(
    npy_path: str | os.PathLike[str], num_classes: int, *, allow_pickle: bool = False
) -> dict[str, list[int]]:
    """Convert the reference's ``cls_labels.npy`` (a pickled ``{id: float32[K]}`` dict) to label indices.

    Unpickling runs arbitrary code from the file, so it is refused unless ``allow_pickle=True``; use it
    only on a file you trust. Keys ending in ``.jpg`` (the COCO variant) are stripped to the image id.
    """
    npy_path = Path(npy_path)
    if not allow_pickle:
        raise ValueError(
            f"{npy_path} is a pickled object array; loading it can execute code. "
            "Pass allow_pickle=True (CLI: --allow-pickle) only for a file you trust."
        )
    warnings.warn(f"unpickling {npy_path} (allow_pickle=True): only do this for a trusted file", stacklevel=2)
    obj = np.load(npy_path, allow_pickle=True)
    d = obj.item() if isinstance(obj, np.ndarray) and obj.shape == () else obj
    if not isinstance(d, dict):
        raise ValueError(f"{npy_path} does not hold a dict of label vectors (got {type(d).__name__})")
    out: dict[str, list[int]] = {}
    for key, vec in d.items():
        v = np.asarray(vec).reshape(-1)
        if v.shape[0] != num_classes:
            raise ValueError(f"{npy_path}: entry {key!r} has {v.shape[0]} classes, expected {num_classes}")
        image_id = str(key)
        if image_id.endswith(".jpg"):
            image_id = image_id[: -len(".jpg")]
        out[image_id] = [int(c) for c in np.flatnonzero(v > 0.5)]
    return out
