"""The prepared-dataset layout: one manifest that says where every split's files are.

``python -m clustercam_pl.prepare voc|coco|folder ... --out ROOT`` writes, under ``ROOT``::

    clustercam_dataset.json       # this manifest; written LAST, so its absence means "not (fully) prepared"
    splits/<split>.txt            # one image id per line
    cls_labels_<source>.json      # image-level labels (see clustercam_pl.data.labels)
    <mask dir>/<id>.png           # class-index PNGs (0 background, c + 1 class c, 255 ignore; without a
                                  # background class, "has_background": false, c = class c)
    image_files.json              # folder datasets only: image id -> file (the suffixes differ)
    <image dir>/<id>.tif          # written by steps that cut patches (potsdam, vaihingen): N-band TIFF
    prepare_report.json           # counts per split and class, skipped items

The manifest's ``extra`` may hold ``in_channels`` and the per-channel ``mean`` / ``std`` of the
training split (N-band data; see :attr:`Manifest.in_channels`). Images are not copied (except by steps
that cut tiles into patches): the manifest stores the image folder relative to ``ROOT`` (absolute only when
no relative path exists), so ``ROOT`` may be the VOC2012 folder itself or a separate folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clustercam_pl.utils.files import write_text

MANIFEST_NAME = "clustercam_dataset.json"
MANIFEST_FORMAT = "clustercam_pl.dataset"
MANIFEST_VERSION = 1

def prepare_hint(dataset: str) -> str:
    """The command that (re)creates a prepared root (the kind's ``prepare_example``), for error messages."""
    from clustercam_pl.data.registry import dataset_kind

    try:
        cmd = dataset_kind(dataset).prepare_example
    except ValueError:  # an unknown kind is reported by whoever asked for it
        cmd = None
    return f"prepare it with `{cmd or 'python -m clustercam_pl.prepare --help'}` and pass `data.data_root=DATA_ROOT`"


@dataclass(frozen=True)
class SplitInfo:
    """Where one split's files are. Paths are relative to the manifest's root."""

    name: str
    list_file: str
    image_dir: str
    image_ext: str = ".jpg"
    mask_dir: str | None = None  # None: the split has no masks (e.g. VOC test)
    has_labels: bool = True  # False: no image-level labels (e.g. VOC test)
    num_images: int = 0
    image_files: str | None = None  # JSON {id: file relative to image_dir}; None: <id><image_ext>


@dataclass(frozen=True)
class Manifest:
    """A parsed ``clustercam_dataset.json``."""

    root: Path
    dataset: str
    classes: tuple[str, ...]
    splits: dict[str, SplitInfo]
    label_files: dict[str, str]  # label source name -> file relative to root
    default_label_source: str
    extra: dict[str, Any] = field(default_factory=dict)
    has_background: bool = True  # False: mask value c is class c (no background class); absent in a file: True

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int | None:
        """Bands of every image (``extra.in_channels``, written by prepare steps of N-band data); None: a
        root written before it existed or for RGB photos of any mode (read and converted to RGB)."""
        value = self.extra.get("in_channels")
        return None if value is None else int(value)

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """(mean, std) per channel in [0, 1] units over the training split (``extra.mean`` / ``extra.std``);
        None: not stored (ImageNet's are used)."""
        mean, std = self.extra.get("mean"), self.extra.get("std")
        if mean is None or std is None:
            return None
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)

    def path(self, rel: str) -> Path:
        """Resolve a manifest path (relative to the root, or absolute)."""
        return (self.root / rel) if not os.path.isabs(rel) else Path(rel)

    def split(self, name: str) -> SplitInfo:
        if name not in self.splits:
            raise ValueError(
                f"split {name!r} is not prepared in {self.root / MANIFEST_NAME} "
                f"(prepared splits: {sorted(self.splits)}); {prepare_hint(self.dataset)}"
            )
        return self.splits[name]

    def label_file(self, source: str | None) -> Path:
        """The label file for ``source`` (a source name in the manifest, or a path to a label file)."""
        source = source or self.default_label_source
        if source in self.label_files:
            return self.path(self.label_files[source])
        if source.endswith(".json"):
            return Path(source)
        raise ValueError(
            f"label_source {source!r} is neither a label source of {self.root / MANIFEST_NAME} "
            f"({sorted(self.label_files)}) nor a path to a .json label file"
        )


def relative_to_root(target: str | os.PathLike[str], root: str | os.PathLike[str]) -> str:
    """``target`` relative to ``root`` when possible (so the prepared root can move with its data)."""
    try:
        return os.path.relpath(os.path.abspath(target), os.path.abspath(root))
    except ValueError:  # e.g. another drive on Windows
        return os.path.abspath(target)


def write_manifest(root: str | os.PathLike[str], manifest: Manifest) -> Path:
    """Write the manifest atomically; call it last, after every mask, list and label file exists."""
    root = Path(root)
    doc = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "dataset": manifest.dataset,
        "classes": list(manifest.classes),
        "splits": {name: vars(s) for name, s in manifest.splits.items()},
        "label_files": manifest.label_files,
        "default_label_source": manifest.default_label_source,
        "has_background": manifest.has_background,
        "extra": manifest.extra,
    }
    return write_text(root / MANIFEST_NAME, json.dumps(doc, indent=2) + "\n")


def read_manifest(root: str | os.PathLike[str] | None, dataset: str) -> Manifest:
    """Read and check ``ROOT/clustercam_dataset.json``; every failure says how to prepare the root.

    Raises:
        FileNotFoundError: ``root`` or its manifest does not exist (not prepared, or preparation was
            interrupted: the manifest is written last).
        ValueError: the manifest is for another dataset or malformed.
    """
    if root is None:
        raise FileNotFoundError(f"data.data_root is not set for data.dataset={dataset}; {prepare_hint(dataset)}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.data_root={root} does not exist; {prepare_hint(dataset)}")
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: data.data_root={root} is not a prepared {dataset} root, or its preparation "
            f"did not finish (the manifest is written last; rerun it); {prepare_hint(dataset)}"
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); {prepare_hint(dataset)}") from e
    if doc.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not a {MANIFEST_FORMAT} manifest")
    if doc.get("dataset") != dataset:
        raise ValueError(
            f"{path} describes dataset {doc.get('dataset')!r}, but data.dataset={dataset} was asked"
        )
    splits = {name: SplitInfo(**s) for name, s in doc["splits"].items()}
    has_background = doc.get("has_background", True)  # manifests written before the key: background
    if not isinstance(has_background, bool):
        raise ValueError(f"{path}: has_background={has_background!r} must be true or false; {prepare_hint(dataset)}")
    return Manifest(
        root=root,
        dataset=doc["dataset"],
        classes=tuple(doc["classes"]),
        splits=splits,
        label_files=dict(doc["label_files"]),
        default_label_source=doc["default_label_source"],
        extra=dict(doc.get("extra", {})),
        has_background=has_background,
    )


def read_split_list(path: str | os.PathLike[str]) -> list[str]:
    """Image ids of a split list (one per line; blank lines ignored, extra tab-separated columns ignored).

    Ids may contain spaces (folder datasets name images by their path), so only a tab ends an id.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split list not found: {path}")
    ids = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("\t")[0].strip()
        if line:
            ids.append(line)
    return ids


def write_image_files(path: str | os.PathLike[str], files: dict[str, str]) -> None:
    """Write ``{image id: image file relative to the image folder}`` (sorted, atomically)."""
    write_text(path, json.dumps(dict(sorted(files.items())), indent=1, ensure_ascii=False) + "\n")


def read_image_files(path: str | os.PathLike[str]) -> dict[str, str]:
    """The id -> file map written by :func:`write_image_files`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file list not found: {path}")
    try:
        files = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ValueError(f"{path} is not a JSON object of image id -> file")
    return files


def write_split_list(path: str | os.PathLike[str], ids: list[str]) -> None:
    """Write one id per line, atomically."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text(path, "".join(f"{i}\n" for i in ids))
