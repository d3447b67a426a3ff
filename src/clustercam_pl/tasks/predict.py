"""A trained network applied to a user's own images: masks, overlays, CAMs and scores on disk, resumable.

No labels, no dataset preparation: the inputs are files (a folder, a glob, one image or a .txt list).
For every input, below ``out_dir`` (the input's sub-folders mirrored, see `list_inputs`):

    <key>.png            palette PNG (VOC colours): 0 background, c + 1 class c (a network trained without a
                         background class: c = class c), the input's W x H;
                         its text chunk ``clustercam_prediction`` holds the image's record (below)
    <key>_overlay.jpg    the image blended with the class colours, a legend of the classes present
    <key>_cam_<class>.jpg  with cams: the multi-scale CAM of each class above the threshold, as a heat map
    predictions.jsonl    one record per readable input, in input order: absolute input path, size, the
                         sigmoid class-token score of every class (at scale 1 when the protocol
                         has it), the classes above the threshold, the pixel fraction of each class
                         in the mask
    failed.txt           the inputs that could not be read or declare more than `max_pixels` pixels
                         (path, tab, reason); absent when none
    predict_meta.json    checkpoint fingerprint and settings; a rerun with others is refused

Inputs: any photo for an RGB network; for an N-band network (aerial RGB-IR tiles) TIFF files of exactly N
bands. Large images (tiles): ``window`` predicts them at full resolution by overlapping sliding windows
(`inference.network.predict_windows`) instead of shrinking them to ``max_side``.

Resumable: every file is written atomically (`utils.files.atomic_write`), the mask (with the record)
last; an input is done when all of its files exist and read back, and a rerun computes only the others, then
rebuilds predictions.jsonl from the records (complete, no duplicates). `predict_subset` processes any
subset of the inputs; `predict_images` with `ranks` (`distributed.launch`) gives each process its share
of the inputs not done yet, and the main process alone writes predictions.jsonl and failed.txt. Plain
arguments only (the entry point is `clustercam_pl.predict`).
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from clustercam_pl.cam.config import CAMConfig
from clustercam_pl.cam.generate import multi_scale_cam
from clustercam_pl.checkpoint import LoadedCheckpoint, find_one_checkpoint, load_checkpoint, resolve_class_names
from clustercam_pl.data.imageio import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    TIFF_SUFFIXES,
    ImageReadError,
    ImageTooLargeError,
    image_size,
    own_pixel_limit,
    read_bands,
    read_image_reduced,
    tiff_size,
    write_index_png,
)
from clustercam_pl.data.labels import label_names
from clustercam_pl.data.transforms import apply_transform, build_eval_transform
from clustercam_pl.inference.network import min_input_side, predict, predict_windows
from clustercam_pl.inference.pool import StepPool, default_workers
from clustercam_pl.inference.protocol import Protocol, input_normalization, postprocess
from clustercam_pl.models import ClusterCAMNet
from clustercam_pl.models.utils import training_mode
from clustercam_pl.utils.checks import check_range
from clustercam_pl.utils.distributed import Ranks
from clustercam_pl.utils.files import OutputFolder, atomic_write, file_sha256
from clustercam_pl.utils.results import write_text_atomic
from clustercam_pl.visualize import cam_image, overlay_image, row_strips

log = logging.getLogger("clustercam_pl.predict")

META_FORMAT = 1
RECORD_KEY = "clustercam_prediction"
"""PNG text chunk of `<key>.png` that holds the image's predictions.jsonl record."""
JSONL, FAILED, META = "predictions.jsonl", "failed.txt", "predict_meta.json"
JPEG_QUALITY = 90


# ---------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class InputImage:
    """One input file and the name of its outputs below out_dir ('/'-separated, no suffix)."""

    path: Path
    key: str


def _image_files(folder: Path, exclude: Path | None) -> list[Path]:
    """The image files below `folder`; links to folders are not entered (`Path.rglob`), so a link loop
    cannot make the listing endless."""
    files = []
    for f in folder.rglob("*"):
        if f.suffix.lower() not in IMAGE_EXTENSIONS or not f.is_file():
            continue
        if exclude is not None and f.resolve().is_relative_to(exclude):
            continue  # our own outputs, when out_dir lies inside the input folder
        files.append(f)
    return sorted(files, key=lambda f: f.as_posix())


def _component_regex(part: str) -> str:
    """One path component of a glob pattern as a regex: ``*`` and ``?`` stay inside the component, ``[...]``
    is a class (``[!...]`` negated); a name starting with '.' only matches a pattern starting with '.'."""
    out, i = [] if part.startswith(".") else [r"(?!\.)"], 0
    while i < len(part):
        c = part[i]
        end = part.find("]", i + 2) if c == "[" else -1
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif end != -1:
            body = part[i + 1:end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _glob_files(pattern: str) -> list[Path]:
    """The files a glob pattern matches, as `glob.glob(pattern, recursive=True)` lists them, but walked here
    for ``**``: `glob` enters links to folders without end, so a link loop (two links to a parent folder)
    makes it list ~2^40 paths. Here every real folder is entered once (through its real path when the
    tree holds it, else through the first link); a link to one already entered is logged and skipped."""
    if "**" not in pattern:  # no recursion: as deep as the pattern, a loop cannot make it endless
        return [Path(f) for f in glob.glob(pattern) if Path(f).is_file()]
    if pattern.endswith(("/", os.sep)):
        return []  # matches folders only
    parts = Path(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    base = Path(*parts[:fixed]) if fixed else Path()
    rest = parts[fixed:]
    regex = re.compile("".join(
        (r"(?:(?!\.)[^/]+/)*" if n < len(rest) - 1 else r"(?:(?!\.)[^/]+/)*(?!\.)[^/]+") if part == "**"
        else _component_regex(part) + ("/" if n < len(rest) - 1 else "")
        for n, part in enumerate(rest)))
    hidden = any(part.startswith(".") for part in rest)  # else hidden folders cannot match: not entered
    files: list[Path] = []
    entered: set[tuple[int, int]] = set()
    pending = [base]  # the tree itself first, then the links to folders found in it: real paths win
    while pending:
        top = pending.pop(0)
        for folder, dirs, names in os.walk(top):  # links to folders are listed in `dirs`, not entered
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in entered:
                log.info("not entering %s: it leads to %s, already listed", folder, os.path.realpath(folder))
                dirs[:] = []
                continue
            entered.add((st.st_dev, st.st_ino))
            dirs[:] = sorted(d for d in dirs if hidden or not d.startswith("."))
            pending += [Path(folder) / d for d in dirs if os.path.islink(os.path.join(folder, d))]
            rel = Path(folder).relative_to(base)
            files += [Path(folder) / n for n in names if regex.fullmatch((rel / n).as_posix())]
    return [f for f in files if f.is_file()]


def _list_file(path: Path) -> list[Path]:
    """The paths of a .txt list: one a line, '#' comments, relative ones relative to the list's folder."""
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line).expanduser()
            out.append(p if p.is_absolute() else path.parent / p)
    return out


def _keys(files: Sequence[Path], root: Path) -> list[str]:
    """Output names: the path as listed (links not resolved: a link to a file elsewhere must not put its
    outputs outside out_dir) relative to `root` without suffix; inputs that would share one (a.jpg and
    a.png in one folder) keep their suffix in the name instead (a_jpg, a_png), and names still shared
    (a.jpg and a.JPG) are numbered in input order (a_jpg, a_jpg_2). Names are compared ignoring case, so
    the outputs stay apart on case-insensitive file systems too."""
    rel = [Path(os.path.relpath(os.path.abspath(f), root)).as_posix() for f in files]
    plain = [r[: -len(Path(r).suffix)] if Path(r).suffix else r for r in rel]
    counts = Counter(k.lower() for k in plain)
    keys = [k if counts[k.lower()] == 1 else k + "_" + Path(r).suffix.lstrip(".").lower()
            for k, r in zip(plain, rel, strict=True)]
    seen: Counter[str] = Counter()
    out = []
    for k in keys:
        seen[k.lower()] += 1
        out.append(k if seen[k.lower()] == 1 else f"{k}_{seen[k.lower()]}")
    return out


def list_inputs(spec: str | os.PathLike | Sequence[str | os.PathLike], exclude: Path | None = None,
                key: str = "input") -> list[InputImage]:
    """The images of `spec`: a folder (its image files, sub-folders included), a glob pattern, one image,
    a .txt list of paths, or a list of paths. `exclude` (out_dir) is never read as input.

    Output names mirror the input's sub-folders: relative to the folder for a folder, to the inputs'
    deepest common folder otherwise, so ``a/x.jpg`` and ``b/x.jpg`` give ``a/x.png`` and ``b/x.png``.
    Files of a list need not exist: a missing one is reported as failed, the others still run.
    """
    exclude = exclude.resolve() if exclude is not None else None
    if not isinstance(spec, str | os.PathLike):
        files, root = [Path(p) for p in spec], None
        if not files:
            raise ValueError(f"{key} is an empty list: pass {key}=<folder | glob | image | .txt list>")
    else:
        text = os.fspath(spec)
        p = Path(text).expanduser()
        if text in ("", "???"):
            raise ValueError(f"{key} is not set: pass {key}=<folder | glob | image | .txt list>")
        if p.is_dir():
            if exclude is not None and p.resolve().is_relative_to(exclude):
                raise ValueError(f"{key}={text} is out_dir or lies inside it ({exclude}): the masks would land "
                                 "among the inputs; pass an out_dir=... outside the input folder")
            files, root = _image_files(p, exclude), Path(os.path.abspath(p))
        elif glob.has_magic(text):
            files = sorted(_glob_files(text), key=lambda f: f.as_posix())
            files, root = [f for f in files if exclude is None or not f.resolve().is_relative_to(exclude)], None
        elif p.is_file() and p.suffix.lower() == ".txt":
            files, root = _list_file(p), None
        elif p.is_file():
            files, root = [p], Path(os.path.abspath(p)).parent
        else:
            raise FileNotFoundError(f"{key}={text} does not exist: pass {key}=<folder | glob | image | .txt list>")
        if not files:
            raise FileNotFoundError(
                f"{key}={text} holds no image files (suffixes {', '.join(IMAGE_EXTENSIONS)}, any case)"
            )
    inside = [f for f in files if exclude is not None and f.resolve().is_relative_to(exclude)]
    if inside:  # a listed file inside out_dir: its mask could overwrite it
        raise ValueError(f"{key}: {inside[0]} lies inside out_dir ({exclude}); pass an out_dir=... outside the inputs")
    unique: dict[str, Path] = {}
    for f in files:
        unique.setdefault(str(f.resolve()), f)
    files = list(unique.values())
    if root is None:
        root = Path(os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files]))
    return [InputImage(f, k) for f, k in zip(files, _keys(files, root), strict=True)]


# ------------------------------------------------------------------------------------ prediction
@dataclass(frozen=True)
class PredictSettings:
    """What is predicted: the protocol, the image-level threshold, the working size, the CAMs."""

    protocol: Protocol
    threshold: float = 0.5
    max_side: int = 1024
    cams: bool = False
    cam: CAMConfig = field(default_factory=CAMConfig)  # scales / flip / cam_layers / p2p_refine of the CAMs
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # larger inputs fail (decompression bombs); not in as_dict
    window: int | None = None  # sliding windows of this side at full resolution (None: the whole image, max_side)
    overlap: float = 0.25  # of a window, between neighbouring windows

    def __post_init__(self) -> None:
        check_range("threshold", self.threshold, ge=0, le=1)
        check_range("max_side", self.max_side, ge=1, integer=True)
        if self.max_pixels is not None:
            check_range("max_pixels", self.max_pixels, ge=1, integer=True)
        check_range("overlap", self.overlap, ge=0, lt=1)
        if self.window is not None:
            check_range("window", self.window, ge=1, integer=True)
            if self.cams:
                raise ValueError("cams=true draws each CAM over the whole image, which a window prediction does not "
                                 "compute: drop cams=true, or predict without window (window=null)")

    def as_dict(self) -> dict[str, Any]:
        cam = ({"scales": list(self.cam.scales), "flip": self.cam.flip, "cam_layers": self.cam.cam_layers,
                "p2p_refine": self.cam.p2p_refine} if self.cams else None)
        return {"protocol": self.protocol.as_dict(), "threshold": self.threshold, "max_side": self.max_side,
                "cams": self.cams, "cam": cam, "window": self.window, "overlap": self.overlap}


@dataclass
class ImagePrediction:
    """One image's prediction at the input's own size."""

    label: np.ndarray  # (H, W) uint8 label values: 0 background, c + 1 class c (without background: c)
    scores: np.ndarray  # (K,) sigmoid of the class-token logits
    cams: dict[int, np.ndarray]  # class index -> (H, W) float32 in [0, 1], the classes above the threshold
    predicted_size: tuple[int, int]  # (h, w) the network saw


def working_size(height: int, width: int, max_side: int, min_side: int, scales: Sequence[float]) -> tuple[int, int]:
    """(h, w) the network sees: the image shrunk so its longer side is at most `max_side`, then enlarged
    where the smallest scale would make the shorter side smaller than `min_side` (aspect kept)."""
    f = min(1.0, max_side / max(height, width))
    h, w = max(round(height * f), 1), max(round(width * f), 1)
    s = min(scales)
    if int(min(h, w) * s) < min_side:
        g = math.ceil(min_side / s) / min(h, w)
        h, w = math.ceil(h * g), math.ceil(w * g)
        while int(min(h, w) * s) < min_side:
            h, w = h + 1, w + 1
    return h, w


def _resize(array: np.ndarray, height: int, width: int, nearest: bool = False) -> np.ndarray:
    if array.shape[:2] == (height, width):
        return array
    shrink = height * width < array.shape[0] * array.shape[1]
    mode = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(array, (width, height), interpolation=mode)


@dataclass
class NetworkOutput:
    """One image after the network, before its label map (post-processing steps may run elsewhere)."""

    image: torch.Tensor  # (N, h, w) normalised, what the network saw
    probs: torch.Tensor  # (C, h, w) segmentation probabilities of the C = cfg.num_labels label values
    scores: np.ndarray  # (K,) sigmoid of the class-token logits
    cams: dict[int, np.ndarray]  # class index -> (H, W) float32 in [0, 1], at the input's size
    size: tuple[int, int]  # (H, W) of the input


def network_size(net: ClusterCAMNet, settings: PredictSettings, height: int, width: int) -> tuple[int, int]:
    """(h, w) the network sees an input of `height` x `width` at (`working_size` for its scales and CAMs);
    with sliding windows the input's own size (`max_side` does not apply: the windows keep it in memory)."""
    scales = [*settings.protocol.scales, *(settings.cam.scales if settings.cams else ())]
    max_side = max(height, width) if settings.window is not None else settings.max_side
    return working_size(height, width, max_side, min_input_side(net), scales)


def read_input(path: Path, net: ClusterCAMNet, settings: PredictSettings) -> tuple[np.ndarray, tuple[int, int]]:
    """(uint8 (h, w, N) pixels, (H, W) of the input) of one input file, for a network of N input channels.

    RGB networks: any photo, decoded no larger than needed (`read_image_reduced`). N-band networks
    (RGB-IR, multispectral): a TIFF of exactly N bands (`read_bands`: another count is refused naming
    the file), decoded whole after its header's size is checked against ``max_pixels``.
    """
    channels = int(getattr(net.cfg, "in_chans", 3))
    if channels == 3:
        image = read_image_reduced(path, lambda H, W: network_size(net, settings, H, W), settings.max_pixels)
        return image.rgb, image.size
    H, W = tiff_size(path) if path.suffix.lower() in TIFF_SUFFIXES else image_size(path)
    if settings.max_pixels is not None and H * W > settings.max_pixels:
        raise ImageTooLargeError(f"image {path}: {W} x {H} = {W * H:,} pixels, more than max_pixels="
                                 f"{settings.max_pixels}; if the file is genuine, pass max_pixels={W * H}")
    return read_bands(path, channels), (H, W)


@torch.no_grad()
def network_output(
    net: ClusterCAMNet, rgb: np.ndarray, settings: PredictSettings, device: torch.device,
    size: tuple[int, int] | None = None,
) -> NetworkOutput:
    """Probabilities, class scores and (if asked) CAMs of one uint8 (H, W, N) image (eval mode).

    The network sees the image at `working_size`, whole or (``settings.window``) window by window
    (`predict_windows`); CAMs come back at the input's size, bilinearly. The image is normalised as the
    network was trained (`NetConfig.normalization`). `size`: the input's (H, W) when `rgb` is it decoded
    reduced (`read_image_reduced`), at least (h, w).
    """
    H, W = size or rgb.shape[:2]
    p = settings.protocol
    h, w = network_size(net, settings, H, W)
    mean, std = input_normalization(net) or (None, None)
    x, _ = apply_transform(build_eval_transform(mean, std), _resize(rgb, h, w))
    x = x[None].to(device)  # (1, N, h, w)
    if settings.window is not None:
        pred = predict_windows(net, x, settings.window, settings.overlap, p.scales, p.flip)
    else:
        pred = predict(net, x, p.scales, p.flip)
    scores = torch.sigmoid(pred.cls_logits[0]).cpu().numpy()  # (K,)
    cams: dict[int, np.ndarray] = {}
    present = [int(c) for c in np.flatnonzero(scores > settings.threshold)]
    if settings.cams and present:
        c = settings.cam
        with training_mode(net, False):
            maps = multi_scale_cam(net, x, c.scales, c.flip, c.cam_layers, c.p2p_refine)[0]  # (K, h, w)
        for k in present:
            cams[k] = _resize(maps[k].float().cpu().numpy(), H, W)  # (H, W)
    return NetworkOutput(x[0], pred.probs[0], scores, cams, (H, W))


def image_prediction(out: NetworkOutput, label: np.ndarray) -> ImagePrediction:
    """The prediction at the input's size from the label map (h, w) at the network's size (nearest-
    neighbour resizing: labels are never blended)."""
    H, W = out.size
    label = label.astype(np.uint8)  # (h, w)
    return ImagePrediction(_resize(label, H, W, nearest=True), out.scores, out.cams, tuple(label.shape[:2]))


@torch.no_grad()
def predict_image(
    net: ClusterCAMNet, rgb: np.ndarray, settings: PredictSettings, device: torch.device
) -> ImagePrediction:
    """Mask, class scores and (if asked) CAMs of one uint8 (H, W, N) image, at its own size (eval mode);
    the protocol's post-processing in this process (`predict_subset` runs it in a `StepPool`)."""
    out = network_output(net, rgb, settings, device)
    [(_, label)] = postprocess([("image", out.image, out.probs)], settings.protocol,
                               normalization=input_normalization(net), background=net.cfg.background)  # (h, w) uint8
    return image_prediction(out, label)


# ------------------------------------------------------------------------------------------ files
def file_label(name: str) -> str:
    """A class name as part of a file name: runs of characters other than letters, digits, '-', '.', '_'
    become '-' ('disc/stripes' -> 'disc-stripes')."""
    return re.sub(r"[^\w.-]+", "-", name).strip("-") or "class"


def output_paths(out_dir: Path, key: str, cam_names: Sequence[str] = ()) -> dict[str, Path]:
    """The files of one input: mask, overlay and one heat map per name in `cam_names`."""
    base = out_dir / key
    paths = {"mask": base.with_name(base.name + ".png"), "overlay": base.with_name(base.name + "_overlay.jpg")}
    for n in cam_names:
        paths[f"cam:{n}"] = base.with_name(f"{base.name}_cam_{file_label(n)}.jpg")
    return paths


def write_jpeg(path: Path, rgb: np.ndarray) -> None:
    """A JPEG written atomically: never half-written under its own name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        Image.fromarray(rgb).save(f, format="JPEG", quality=JPEG_QUALITY)


def make_record(item: InputImage, pred: ImagePrediction, class_names: Sequence[str], threshold: float,
                background: bool = True) -> dict:
    """The image's predictions.jsonl line (``background``: the label convention of ``pred.label``)."""
    H, W = pred.label.shape
    names = label_names(class_names, background)
    counts = sum(np.bincount(pred.label[rows].ravel(), minlength=len(names))  # (C,)
                 for rows in row_strips(H, W))  # in strips: bincount widens to int64, 8 bytes a pixel
    return {
        "input": os.path.abspath(item.path),
        "output": item.key,
        "width": W, "height": H,
        "predicted_size": {"width": pred.predicted_size[1], "height": pred.predicted_size[0]},
        "scores": {n: round(float(s), 6) for n, s in zip(class_names, pred.scores, strict=True)},
        "classes": [n for n, s in zip(class_names, pred.scores, strict=True) if s > threshold],
        "pixel_fraction": {names[c]: round(int(counts[c]) / (H * W), 6) for c in np.flatnonzero(counts)},
    }


def write_outputs(out_dir: Path, item: InputImage, rgb: np.ndarray, pred: ImagePrediction,
                  class_names: Sequence[str], threshold: float, background: bool = True) -> dict[str, Any]:
    """Every file of one input (the mask, which carries the record, last); returns the record.
    ``background``: the label convention of ``pred.label`` (the network's ``cfg.background``)."""
    record = make_record(item, pred, class_names, threshold, background)
    paths = output_paths(out_dir, item.key, [class_names[k] for k in pred.cams])
    for k, cam in pred.cams.items():
        write_jpeg(paths[f"cam:{class_names[k]}"], cam_image(rgb, cam))
    write_jpeg(paths["overlay"], overlay_image(rgb, pred.label, class_names, background))
    write_index_png(paths["mask"], pred.label, text={RECORD_KEY: json.dumps(record)}, background=background)
    return record


def read_done(out_dir: Path, item: InputImage, cams: bool) -> dict[str, Any] | None:
    """The record of a finished input: all of its files exist, decode and have the input's size; else None."""
    paths = output_paths(out_dir, item.key)
    if not all(p.is_file() for p in paths.values()):
        return None
    try:
        with own_pixel_limit(), Image.open(paths["mask"]) as im:  # ours: as large as the input we accepted
            im.load()
            record = json.loads(im.text[RECORD_KEY])
            mask_size = im.size
        if record["input"] != os.path.abspath(item.path):
            log.warning("redoing %s: its outputs were made from %s", item.path, record["input"])
            return None
        size = (int(record["width"]), int(record["height"]))
        cam_names = record["classes"] if cams else []
        for name, p in output_paths(out_dir, item.key, cam_names).items():
            if name == "mask":
                got = mask_size
            else:
                with own_pixel_limit(), Image.open(p) as im:
                    im.load()
                    got = im.size
            if got != size:
                raise ValueError(f"{p.name} is {got[0]}x{got[1]}, the record says {size[0]}x{size[1]}")
    except Exception as e:  # anything unreadable is redone, never trusted
        log.warning("redoing %s: its outputs do not read back (%s: %s)", item.path, type(e).__name__, e)
        return None
    return record


# ------------------------------------------------------------------------------------------- loop
@dataclass
class SubsetResult:
    """What `predict_subset` did: each index's record or failure."""

    records: dict[int, dict[str, Any]] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)  # index -> reason
    computed: int = 0
    reused: int = 0


def done_records(items: Sequence[InputImage], indices: Iterable[int], out_dir: Path,
                 cams: bool) -> tuple[dict[int, dict[str, Any]], list[int]]:
    """The records of the inputs among `indices` that are done (`read_done`), and the others' indices."""
    records, todo = {}, []
    for i in indices:
        record = read_done(out_dir, items[i], cams)
        if record is None:
            todo.append(i)
        else:
            records[i] = record
    return records, todo


def _compute(net: ClusterCAMNet, items: Sequence[InputImage], indices: Sequence[int], out_dir: Path,
             settings: PredictSettings, class_names: Sequence[str], device: torch.device,
             pool: StepPool | None, progress: bool, result: SubsetResult) -> None:
    """Predict and write `items[i]` for every i in `indices` into `result`. With post-processing steps,
    an image goes to `pool` once the network is done with it, and the next image's forward pass runs
    while the pool works; its files are written when its label map comes back (in input order)."""
    bar = tqdm(total=len(indices), desc="predict", unit="img", disable=not progress, dynamic_ncols=True)
    waiting: dict[str, tuple[int, np.ndarray, NetworkOutput]] = {}  # key -> (index, rgb, network output)

    def predicted() -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
        for i in indices:
            try:  # decoded no larger than the network needs (a 100 MP JPEG at 1/8): (h', w', N) uint8
                pixels, size = read_input(items[i].path, net, settings)
            except ImageReadError as e:
                log.error("skipping %s: %s", items[i].path, e)
                result.failed[i] = str(e)
                bar.update()
                continue
            out = network_output(net, pixels, settings, device, size)
            waiting[items[i].key] = (i, pixels[..., :3], out)  # the overlay shows the first 3 bands
            yield items[i].key, out.image, out.probs  # (N, h, w), (C, h, w)

    for key, label in postprocess(predicted(), settings.protocol, pool,
                                  normalization=input_normalization(net), background=net.cfg.background):
        i, rgb, out = waiting.pop(key)
        rgb = _resize(rgb, *out.size)  # (H, W, 3): the overlay and CAM pictures have the input's size
        pred = image_prediction(out, label)
        result.records[i] = write_outputs(out_dir, items[i], rgb, pred, class_names, settings.threshold,
                                          net.cfg.background)
        result.computed += 1
        bar.update()
    bar.close()


def predict_subset(
    net: ClusterCAMNet,
    items: Sequence[InputImage],
    indices: Sequence[int],
    out_dir: Path,
    settings: PredictSettings,
    class_names: Sequence[str],
    device: torch.device,
    overwrite: bool = False,
    progress: bool = True,
    pool: StepPool | None = None,
) -> SubsetResult:
    """Predict `items[i]` for every i in `indices` that is not done yet (all of them with `overwrite`).

    Only those files are written, each atomically, so disjoint index sets can run in separate processes
    over one out_dir. An unreadable input is logged and returned as failed; the others still run.
    The protocol's post-processing runs in `pool` (None: in this process).
    """
    result = SubsetResult()
    if overwrite:
        todo = list(indices)
    else:
        result.records, todo = done_records(items, indices, out_dir, settings.cams)
        result.reused = len(result.records)
    _compute(net, items, todo, out_dir, settings, class_names, device, pool, progress, result)
    return result


def write_jsonl(out_dir: Path, records: Sequence[dict[str, Any]]) -> Path:
    """predictions.jsonl, rebuilt whole from the records (atomically): one line per readable input."""
    return write_text_atomic(out_dir / JSONL, "".join(json.dumps(r) + "\n" for r in records))


def write_failed(out_dir: Path, failed: Sequence[tuple[InputImage, str]]) -> Path | None:
    """failed.txt (path, tab, reason per line); removed when nothing failed (a stale list would mislead)."""
    path = out_dir / FAILED
    if not failed:
        path.unlink(missing_ok=True)
        return None
    reasons = (" ".join(reason.split()) for _, reason in failed)
    lines = (f"{os.path.abspath(item.path)}\t{r}\n" for (item, _), r in zip(failed, reasons, strict=True))
    return write_text_atomic(path, "".join(lines))


def predict_images(
    ckpt_spec: str | os.PathLike | Sequence[str | os.PathLike],
    input_spec: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    protocol: Protocol,
    device: torch.device,
    *,
    cams: bool = False,
    threshold: float = 0.5,
    max_side: int = 1024,
    class_names: Sequence[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    net_overrides: Mapping[str, Any] | None = None,
    crf_workers: int | None = None,
    ranks: Ranks | None = None,
    on_claim: Callable[[], None] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    window: int | None = None,
    overlap: float = 0.25,
) -> dict[str, Any]:
    """Predict every input of `input_spec` into `out_dir` with one checkpoint (module docstring); returns a
    summary (counts, failed inputs, speed). `class_names` replaces the names the checkpoint implies.

    `out_dir` is claimed first (`utils.files.OutputFolder`): a second run into it while this one runs
    is refused, naming the owner; `on_claim` (main process) runs once it is ours (e.g. to record env.json).
    `ranks` (`distributed.launch`): each process checks its share of the inputs, then predicts its
    share of those not done yet (every input by exactly one process); the main process writes
    predictions.jsonl and failed.txt, and every process returns the summary one process would.
    `crf_workers`: post-processing worker processes (None: the available cores shared by this
    machine's processes; 0: in this process). `max_pixels`: an input whose header declares more pixels
    fails (listed in failed.txt) before it is decoded; None: no limit. `window`: predict at full
    resolution by sliding windows of this side overlapping by `overlap` (`predict_windows`; the way for
    images larger than a window, e.g. aerial tiles); None: the whole image, shrunk to `max_side`.
    """
    ranks = ranks or Ranks(device=device)  # its device is the one used
    protocol.require()  # before the checkpoint is read
    out_dir = Path(out_dir)
    path = find_one_checkpoint(ckpt_spec)
    ckpt = load_checkpoint(path, **dict(net_overrides or {}))
    if cams and not isinstance(ckpt.net, ClusterCAMNet):
        raise ValueError(f"cams=true: {path} holds a stage-two {type(ckpt.net).__name__}, which makes no CAMs; "
                         "drop cams=true, or predict with a ClusterCAM checkpoint")
    names, settings = _settings(ckpt, path, protocol, class_names, threshold, max_side, cams, max_pixels,
                                window, overlap)
    items = list_inputs(input_spec, exclude=out_dir)
    meta = {"format": META_FORMAT, "checkpoint_sha256": ranks.from_main(lambda: file_sha256(path)),
            "class_names": names, **settings.as_dict()}
    with OutputFolder(out_dir, meta, command="predict", overwrite=overwrite, meta_name=META).claim(ranks):
        if ranks.is_main:
            if on_claim is not None:
                on_claim()
            log.info("%s: %d inputs -> %s (%s, %d classes%s)", path, len(items), out_dir, protocol.name,
                     len(names), f", {ranks.world_size} processes" if ranks.distributed else "")
        # Done-checks sharded, then the inputs not done yet sharded: balanced on a rerun too.
        mine = ranks.shard(range(len(items)))
        records, todo = ({}, list(mine)) if overwrite else done_records(items, mine, out_dir, cams)
        todo = sorted(i for share in ranks.gather(todo) for i in share)
        result = SubsetResult(records=records, reused=len(records))
        workers = default_workers(ranks.local_world_size) if crf_workers is None else crf_workers
        if ranks.is_main and protocol.steps:
            log.info("post-processing in %s",
                     f"{workers} worker process(es) per process" if workers else "the main process")
        net = ckpt.net.to(ranks.device).eval()
        t0 = time.perf_counter()
        # In flight: two images per worker and the next one, whose forward pass overlaps their post-processing.
        with StepPool(protocol.steps, workers, max_pending=2 * workers + 1) as pool:
            _compute(net, items, ranks.shard(todo), out_dir, settings, names, ranks.device, pool,
                     progress and ranks.is_main, result)
        seconds = ranks.max(time.perf_counter() - t0)
        summary = _gather(items, result, out_dir, ranks, seconds)
    summary = {"checkpoint": str(path), "out_dir": str(out_dir), **summary, **settings.as_dict(), "class_names": names}
    if ranks.is_main:
        split = f"; per process {summary['predicted_per_process']}" if ranks.distributed else ""
        log.info("%d predicted, %d already done, %d failed (%.1f s, %s images/s%s); results in %s",
                 summary["predicted"], summary["reused"], len(summary["failed"]), seconds,
                 summary["images_per_s"], split, out_dir / JSONL)
    return summary


def _settings(
    ckpt: LoadedCheckpoint, path: Path, protocol: Protocol, class_names: Sequence[str] | None,
    threshold: float, max_side: int, cams: bool, max_pixels: int | None, window: int | None = None,
    overlap: float = 0.25,
) -> tuple[list[str], PredictSettings]:
    """The class names and the settings of a run, checked against the checkpoint's network."""
    K = ckpt.net.cfg.num_classes
    if class_names is not None and len(class_names) != K:
        raise ValueError(f"class_names has {len(class_names)} names; the network of {path} predicts {K} classes")
    names = list(class_names) if class_names is not None else resolve_class_names(K, ckpt.class_names)
    cam = CAMConfig.from_stored(ckpt.cam, str(path))
    settings = PredictSettings(protocol, threshold, max_side, cams, cam, max_pixels, window, overlap)
    if cams:  # before any image, not at the first one with a class above the threshold
        settings.cam.check_for(ckpt.net.cfg)
    return names, settings


def _gather(items: Sequence[InputImage], result: SubsetResult, out_dir: Path, ranks: Ranks,
            seconds: float) -> dict[str, Any]:
    """Every process's records and failures: predictions.jsonl and failed.txt (main process), the counts."""
    shares = ranks.gather((result.records, result.failed, result.computed))
    all_records = {i: r for recs, _, _ in shares for i, r in recs.items()}
    all_failed = {i: reason for _, fails, _ in shares for i, reason in fails.items()}
    per_process = [c for _, _, c in shares]
    computed = sum(per_process)
    failed = [(items[i], all_failed[i]) for i in sorted(all_failed)]
    if ranks.is_main:
        write_jsonl(out_dir, [all_records[i] for i in sorted(all_records)])
        write_failed(out_dir, failed)
    return {
        "inputs": len(items), "predicted": computed, "reused": len(all_records) - computed,
        "processes": ranks.world_size, "predicted_per_process": per_process,
        "failed": [os.path.abspath(item.path) for item, _ in failed],
        "seconds": round(seconds, 3),
        "images_per_s": round(computed / seconds, 3) if computed and seconds > 0 else None,
    }
