"""A synthetic WSSS dataset generated on the fly: the quickstart, the tests and the notebooks use it.

Each item is rendered from ``(seed, split, index)`` alone (``numpy.random.default_rng([seed, split,
index])``), so it is deterministic, needs no download and holds nothing in memory.

Image: a textured background (colour gradient + faint random texture), ``clutter``-many distractor
blobs, then 1..``max_objects`` objects. Object classes differ in **shape and texture together**:

====  ==========  ============  ====  ==========  ============
 c     shape       texture        c    shape       texture
====  ==========  ============  ====  ==========  ============
 0     disc        stripes        4    cross       grid lines
 1     square      checker        5    hexagon     concentric
 2     triangle    dots           6    star        waves
 3     ring        noise          7    crescent    cross-hatch
====  ==========  ============  ====  ==========  ============

Colours are drawn per instance from one palette (uniform RGB, two colours per texture), so no pixel
colour tells the class; distractor blobs (irregular outlines) reuse the class textures, so texture alone
does not either. With ``class_colours`` each class instead keeps its own two colours (jittered per
instance), the easiest setting: a colour names the class, as in many real categories (sky, grass).

Objects have random size, position, rotation and texture phase/period; later objects occlude
earlier ones (the mask follows the occlusion), and a placement that would hide more than
``1 - min_visible`` of an earlier object is retried. The mask is exact: 0 background, c + 1 class c.
The image-level label is the set of classes visible in the mask.

With ``background=False`` (a stand-in for data without a background class, such as histopathology
tissue types) every pixel belongs to a class: what would be background is a random class's texture
(its "tissue"), and the mask holds class c as value c (:mod:`clustercam_pl.data.labels`).

Difficulty knobs (:func:`difficulty_knobs` returns them with defaults and meaning, for the README):
``scale_range``, ``max_objects``, ``clutter``, ``color_jitter``, ``noise``, ``min_visible``,
``rotate_textures``, ``class_colours``; plus ``num_classes`` (1..8) and ``image_size`` (default 64).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from clustercam_pl.data.labels import mask_classes
from clustercam_pl.data.registry import DatasetKind, LoadOptions
from clustercam_pl.data.transforms import apply_transform, build_eval_transform
from clustercam_pl.utils.checks import check_range

SHAPES = ("disc", "square", "triangle", "ring", "cross", "hexagon", "star", "crescent")
TEXTURES = ("stripes", "checker", "dots", "noise", "grid", "concentric", "waves", "crosshatch")
MAX_CLASSES = len(SHAPES)
# The two colours of each class's texture when ``class_colours`` is on: far apart in hue, and each
# pair with a luminance gap so the texture shows. Distractors and background keep random colours.
CLASS_COLOURS = np.array(
    [
        [[0.85, 0.10, 0.10], [1.00, 0.65, 0.55]],  # red
        [[0.10, 0.25, 0.85], [0.60, 0.80, 1.00]],  # blue
        [[0.10, 0.55, 0.10], [0.65, 0.95, 0.40]],  # green
        [[0.95, 0.80, 0.05], [0.45, 0.30, 0.00]],  # yellow / brown
        [[0.60, 0.10, 0.70], [0.95, 0.65, 1.00]],  # purple
        [[0.00, 0.60, 0.65], [0.60, 1.00, 0.95]],  # teal
        [[0.95, 0.45, 0.00], [0.30, 0.10, 0.00]],  # orange
        [[0.10, 0.10, 0.10], [0.90, 0.90, 0.90]],  # black / white
    ],
    dtype=np.float64,
)  # (MAX_CLASSES, 2, 3)
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class SyntheticConfig:
    """Generator settings; checked on construction. See :func:`difficulty_knobs` for the meaning."""

    num_classes: int = 4
    image_size: int = 64
    scale_range: tuple[float, float] = (0.3, 0.6)
    max_objects: int = 3
    clutter: float = 0.5
    color_jitter: float = 0.2
    noise: float = 0.04
    min_visible: float = 0.4
    rotate_textures: bool = True
    class_colours: bool = False
    background: bool = True
    num_train: int = 2000
    num_val: int = 200
    num_test: int = 200

    group: ClassVar[str] = "data.synthetic"  # where it sits in the config: messages name `data.synthetic.<field>`

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale_range", tuple(float(s) for s in self.scale_range))
        g = self.group
        check_range(f"{g}.num_classes", self.num_classes, ge=1, le=MAX_CLASSES, integer=True)
        check_range(f"{g}.image_size", self.image_size, ge=16, integer=True)
        if len(self.scale_range) != 2:
            raise ValueError(f"{g}.scale_range={list(self.scale_range)} must be two numbers [low, high]")
        lo, hi = self.scale_range
        check_range(f"{g}.scale_range[0]", lo, ge=0.05, le=1.0)
        check_range(f"{g}.scale_range[1]", hi, ge=lo, le=1.0)
        check_range(f"{g}.max_objects", self.max_objects, ge=1, le=6, integer=True)
        check_range(f"{g}.clutter", self.clutter, ge=0.0, le=1.0)
        check_range(f"{g}.color_jitter", self.color_jitter, ge=0.0, le=0.9)
        check_range(f"{g}.noise", self.noise, ge=0.0, le=0.5)
        check_range(f"{g}.min_visible", self.min_visible, ge=0.0, le=1.0)
        for split in SPLIT_CODES:
            check_range(f"{g}.num_{split}", getattr(self, f"num_{split}"), ge=0, integer=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> SyntheticConfig:
        """Build from a plain dict (e.g. the Hydra ``data.synthetic`` node); unknown keys are errors."""
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown synthetic option(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    def length(self, split: str) -> int:
        return {"train": self.num_train, "val": self.num_val, "test": self.num_test}[split]


def difficulty_knobs() -> dict[str, dict[str, Any]]:
    """The generator's knobs: ``{name: {"default": value, "help": what it changes}}``."""
    d = SyntheticConfig()
    helps = {
        "num_classes": "object classes K (1..8); each is a (shape, texture) pair",
        "image_size": "square image side in pixels (64 px = an 8x8 grid of 8 px patches)",
        "scale_range": "object diameter as a fraction of the image side (smaller = harder)",
        "max_objects": "objects per image are drawn from 1..max_objects (more = more overlap)",
        "clutter": "0..1: number of distractor blobs (up to 6) and contrast of the background texture",
        "color_jitter": "0..0.9: per-image brightness/contrast/channel-gain jitter",
        "noise": "std of Gaussian pixel noise (image in 0..1)",
        "min_visible": "minimum visible fraction of an occluded object (lower = harder occlusion)",
        "rotate_textures": "textures at a random angle (harder: orientation must be learned away)",
        "class_colours": "each class keeps its own two colours (easiest: colour names the class)",
        "background": "false: no background class, every pixel is a class (the background is one class's texture)",
    }
    return {k: {"default": getattr(d, k), "help": h} for k, h in helps.items()}


def class_names(num_classes: int) -> tuple[str, ...]:
    """``("disc/stripes", "square/checker", ...)`` for the first ``num_classes`` classes."""
    return tuple(f"{s}/{t}" for s, t in zip(SHAPES[:num_classes], TEXTURES[:num_classes], strict=True))


# --------------------------------------------------------------------------------------------------
# Rendering (numpy, float images in [0, 1])


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """bool (H, W): ``shape`` in local coordinates (u, v), unit circumradius."""
    r2 = u * u + v * v
    if shape == "disc":
        return r2 <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.75
    if shape == "ring":
        return (r2 <= 1.0) & (r2 >= 0.5**2)
    if shape == "cross":
        return ((np.abs(u) <= 0.32) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.32) & (np.abs(u) <= 1.0))
    if shape in ("triangle", "hexagon"):
        n, inradius = (3, 0.55) if shape == "triangle" else (6, 0.85)
        ang = np.pi / 2 + 2 * np.pi * np.arange(n) / n
        inside = np.ones_like(u, dtype=bool)
        for a in ang:
            inside &= u * np.cos(a) + v * np.sin(a) <= inradius
        return inside
    if shape == "star":
        theta = np.arctan2(v, u)
        return np.sqrt(r2) <= 0.55 + 0.45 * np.cos(5 * theta)
    if shape == "crescent":
        return (r2 <= 1.0) & ((u - 0.45) ** 2 + v * v > 0.75**2)
    raise ValueError(f"unknown shape {shape!r}")


def _texture(name: str, x: np.ndarray, y: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    """float (H, W) in [0, 1]: texture ``name`` at (rotated, centred) pixel coordinates (x, y)."""
    p = period
    if name == "stripes":
        return ((x / p) % 1.0 < 0.5).astype(np.float32)
    if name == "checker":
        return ((np.floor(x / p) + np.floor(y / p)) % 2).astype(np.float32)
    if name == "dots":
        dx, dy = x % p - p / 2, y % p - p / 2
        return (dx * dx + dy * dy < (0.32 * p) ** 2).astype(np.float32)
    if name == "noise":
        h, w = x.shape
        cells = rng.random(((h + 1) // 2 + 1, (w + 1) // 2 + 1)) < 0.5  # 2x2-pixel speckle
        return np.kron(cells, np.ones((2, 2)))[:h, :w].astype(np.float32)
    if name == "grid":
        return ((x % p < 0.3 * p) | (y % p < 0.3 * p)).astype(np.float32)
    if name == "concentric":
        return ((np.sqrt(x * x + y * y) / p) % 1.0 < 0.5).astype(np.float32)
    if name == "waves":
        return (((x + 0.6 * p * np.sin(2 * np.pi * y / (2.5 * p))) / p) % 1.0 < 0.5).astype(np.float32)
    if name == "crosshatch":
        return ((((x + y) / p) % 1.0 < 0.3) | (((x - y) / p) % 1.0 < 0.3)).astype(np.float32)
    raise ValueError(f"unknown texture {name!r}")


def _two_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two random RGB colours with a visible luminance difference (so the texture shows)."""
    lum = np.array([0.299, 0.587, 0.114])
    for _ in range(20):
        a, b = rng.random(3), rng.random(3)
        if abs(float((a - b) @ lum)) >= 0.25:
            break
    return a, b


class _Canvas:
    """Pixel grid helpers for one image of side ``s``."""

    def __init__(self, s: int, rotate: bool = True) -> None:
        self.s, self.rotate = s, rotate
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
        self.xx, self.yy = xx, yy  # (S, S)

    def local(self, cx: float, cy: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates relative to (cx, cy), rotated by ``angle``: (S, S) each."""
        dx, dy = self.xx - cx, self.yy - cy
        c, s = np.cos(angle), np.sin(angle)
        return c * dx + s * dy, -s * dx + c * dy

    def textured(
        self, name: str, cx: float, cy: float, rng: np.random.Generator, colours: np.ndarray | None = None
    ) -> np.ndarray:
        """float (S, S, 3): texture ``name`` in two colours (random, or ``colours`` (2, 3) jittered),
        random angle/period/phase."""
        angle = rng.uniform(0, np.pi)  # always drawn, so the knob changes nothing else
        x, y = self.local(cx + rng.uniform(-5, 5), cy + rng.uniform(-5, 5), angle if self.rotate else 0.0)
        period = rng.uniform(3.0, 6.0) * max(1.0, self.s / 96)
        t = _texture(name, x, y, period, rng)[..., None]  # (S, S, 1)
        a, b = _two_colours(rng)  # always drawn, as above
        jitter = rng.uniform(-0.08, 0.08, size=(2, 3))
        if colours is not None:
            a, b = np.clip(colours + jitter, 0.0, 1.0)
        return (1 - t) * a + t * b  # (S, S, 3)


def render(
    config: SyntheticConfig, rng: np.random.Generator, with_objects: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """One image and its mask: uint8 (S, S, 3) RGB and uint8 (S, S) with 0 bg, c + 1 class c
    (``config.background=False``: c = class c, every pixel a class).

    ``with_objects=False`` renders a negative image: background and distractors only, mask all 0.
    """
    cfg, s = config, config.image_size
    if not (with_objects or cfg.background):
        raise ValueError("data.synthetic.background=false: every pixel is a class, so there is no negative image")
    cv = _Canvas(s, cfg.rotate_textures)
    # Background: gradient between two colours plus a faint random texture.
    a, b = _two_colours(rng)
    ang = rng.uniform(0, 2 * np.pi)
    g = ((np.cos(ang) * cv.xx + np.sin(ang) * cv.yy) / (s * 1.5) + 0.5)[..., None]  # (S, S, 1)
    img = (1 - g) * a + g * b  # (S, S, 3)
    bg_tex = cv.textured(TEXTURES[rng.integers(len(TEXTURES))], s / 2, s / 2, rng)
    alpha = 0.1 + 0.4 * cfg.clutter * rng.random()
    img = (1 - alpha) * img + alpha * bg_tex
    # Distractors: irregular blobs with any texture (class textures included), behind the objects.
    for _ in range(rng.integers(0, round(6 * cfg.clutter) + 1)):
        cx, cy = rng.uniform(0, s, size=2)
        r = rng.uniform(*cfg.scale_range) * s / 2
        u, v = cv.local(cx, cy, 0.0)
        theta, rad = np.arctan2(v, u), np.sqrt(u * u + v * v) / r
        k = rng.integers(3, 7, size=3)  # lobed, non-convex outlines: unlike any class shape
        wobble = sum(rng.uniform(0.12, 0.3) * np.cos(kk * theta + rng.uniform(0, 2 * np.pi)) for kk in k)
        blob = rad <= 0.75 + wobble
        img[blob] = cv.textured(TEXTURES[rng.integers(len(TEXTURES))], cx, cy, rng)[blob]
    # Objects, back to front.
    mask = np.zeros((s, s), dtype=np.uint8)  # (S, S) class + 1
    inst = np.zeros((s, s), dtype=np.int16)  # (S, S) instance id, 0 = none
    areas: list[int] = []
    placed: list[tuple[float, float, float]] = []
    n_objects = int(rng.integers(1, cfg.max_objects + 1)) if with_objects else 0
    for _ in range(n_objects):
        c = int(rng.integers(cfg.num_classes))
        for _try in range(12):
            r = rng.uniform(*cfg.scale_range) * s / 2
            if placed and rng.random() < 0.5:  # next to an earlier object: partial overlap
                px, py, pr = placed[rng.integers(len(placed))]
                d, phi = rng.uniform(0.5, 1.3) * (pr + r), rng.uniform(0, 2 * np.pi)
                cx, cy = px + d * np.cos(phi), py + d * np.sin(phi)
            else:
                cx, cy = rng.uniform(0.2 * s, 0.8 * s, size=2)
            u, v = cv.local(cx, cy, rng.uniform(0, 2 * np.pi))
            m = _shape_mask(SHAPES[c], u / r, v / r)  # (S, S) bool
            if m.sum() < max(12, 0.004 * s * s):
                continue
            vis = np.bincount(inst[~m].ravel(), minlength=len(areas) + 1)[1:]  # (n,) visible px left
            if all(vis[i] >= cfg.min_visible * areas[i] for i in range(len(areas))):
                break
        else:
            continue  # no placement keeps the earlier objects visible enough: leave this one out
        img[m] = cv.textured(TEXTURES[c], cx, cy, rng, CLASS_COLOURS[c] if cfg.class_colours else None)[m]
        mask[m] = c + 1
        inst[m] = len(areas) + 1
        areas.append(int(m.sum()))
        placed.append((cx, cy, r))
    if not cfg.background:  # the rest of the image is one more class's region (drawn last: the
        # background case's random stream is unchanged)
        c = int(rng.integers(cfg.num_classes))
        rest = mask == 0  # (S, S)
        img[rest] = cv.textured(TEXTURES[c], s / 2, s / 2, rng, CLASS_COLOURS[c] if cfg.class_colours else None)[rest]
        mask[rest] = c + 1
        mask -= 1  # class c = value c
    # Photometric jitter and noise.
    cj = cfg.color_jitter
    if cj > 0:
        mean = img.mean()
        img = (img - mean) * (1 + rng.uniform(-cj, cj)) + mean  # contrast
        img = (
            img * (1 + rng.uniform(-cj, cj)) * (1 + rng.uniform(-cj / 2, cj / 2, size=3))
        )  # brightness, gain
    if cfg.noise > 0:
        img = img + rng.normal(0.0, cfg.noise, size=img.shape)
    image = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)  # (S, S, 3)
    return image, mask


def make_sample(
    config: SyntheticConfig, seed: int, split: str, index: int, with_objects: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Render item ``index`` of ``split``; the same arguments always give the same arrays."""
    key = [int(seed), SPLIT_CODES[split], int(index)]
    rng = np.random.default_rng(key if with_objects else [*key, 1])  # negatives: their own stream
    return render(config, rng, with_objects)


class SyntheticWSSS(Dataset, DatasetKind):
    """The synthetic set with the package's item contract (see :mod:`clustercam_pl.data.prepared`).

    Args:
        split: "train", "val" or "test" (different images; lengths from the config).
        config: a :class:`SyntheticConfig` or a dict of its fields (None: defaults).
        seed: base seed; item ``i`` is rendered from ``(seed, split, i)``.
        transform: albumentations pipeline (default: normalise only).
        with_mask: return the mask (default: True except for "train"; training never reads it).
    """

    # Facts (see DatasetKind): made from the seed, nothing to prepare; classes and size from `data.synthetic`.
    name: ClassVar[str] = "synthetic"

    @classmethod
    def configure(cls, options: Mapping[str, Any] | None) -> SyntheticConfig:
        return SyntheticConfig.from_dict(options)

    @classmethod
    def default_crop(cls, config: SyntheticConfig) -> int:
        return config.image_size

    @classmethod
    def training_side(cls, data: Mapping[str, Any]) -> tuple[str, int | None]:
        """Null crop or no transform: the images are trained at ``data.synthetic.image_size``."""
        if data.get("crop_size") is None or data.get("train_transform") == "none":
            size = (data.get("synthetic") or {}).get("image_size")
            return "data.synthetic.image_size", None if size is None else int(size)
        return super().training_side(data)

    @classmethod
    def class_names_of(cls, root: str | None, config: SyntheticConfig) -> tuple[str, ...]:
        return class_names(config.num_classes)

    @classmethod
    def has_background_of(cls, root: str | None, config: SyntheticConfig) -> bool:
        return config.background

    @classmethod
    def build(cls, split: str, transform: Callable[..., dict[str, Any]], *, train: bool,
              opts: LoadOptions) -> SyntheticWSSS:
        return cls(split, opts.config, opts.seed, transform, with_mask=not train)

    def __init__(
        self,
        split: str = "train",
        config: SyntheticConfig | Mapping[str, Any] | None = None,
        seed: int = 0,
        transform: Callable[..., dict[str, Any]] | None = None,
        with_mask: bool | None = None,
    ) -> None:
        if split not in SPLIT_CODES:
            raise ValueError(f"synthetic split must be one of {sorted(SPLIT_CODES)}, got {split!r}")
        self.config = config if isinstance(config, SyntheticConfig) else SyntheticConfig.from_dict(config)
        self.split = split
        self.seed = int(seed)
        self.transform = transform if transform is not None else build_eval_transform()
        self.with_mask = split != "train" if with_mask is None else with_mask
        self.classes = class_names(self.config.num_classes)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def __len__(self) -> int:
        return self.config.length(self.split)

    # The raw side, for stage two's fixed labels (data.fixed_labels.RawSource).
    def item_id(self, index: int) -> str:
        return f"synthetic_{self.split}_{index:06d}"

    def image_hw(self, index: int) -> tuple[int, int]:
        return self.config.image_size, self.config.image_size

    def _sample(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """uint8 image (S, S, 3), uint8 mask (S, S) and float32 (K,) label of item ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for synthetic {self.split} (length {len(self)})")
        image, mask = make_sample(self.config, self.seed, self.split, index)
        label = np.zeros(self.num_classes, dtype=np.float32)  # (K,)
        label[mask_classes(mask, self.num_classes, self.config.background)] = 1.0
        return image, mask, label

    def raw_item(self, index: int) -> tuple[str, np.ndarray, np.ndarray]:
        """(image id, uint8 (S, S, 3) image, float32 (K,) label), untransformed."""
        image, _, label = self._sample(index)
        return self.item_id(index), image, label

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask, label = self._sample(index)
        img_t, mask_t = apply_transform(self.transform, image, mask if self.with_mask else None)
        item: dict[str, Any] = {
            "image": img_t,
            "cls_label": torch.from_numpy(label),
            "image_id": self.item_id(index),
        }
        if mask_t is not None:
            item["mask"] = mask_t
        return item


def save_preview(
    path: str | os.PathLike[str],
    n: int = 6,
    config: SyntheticConfig | Mapping[str, Any] | None = None,
    seed: int = 0,
    split: str = "val",
) -> None:
    """Save a PNG grid of ``n`` images (top) and their masks over them (bottom), for the README."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    from clustercam_pl.data.imageio import voc_palette

    cfg = config if isinstance(config, SyntheticConfig) else SyntheticConfig.from_dict(config)
    names = class_names(cfg.num_classes)
    pal = np.array(voc_palette(cfg.num_classes + 1), dtype=np.float32).reshape(-1, 3) / 255.0
    cmap = ListedColormap(pal)
    fig = Figure(figsize=(1.8 * n, 3.9))
    FigureCanvasAgg(fig)  # attaches itself to the figure; no pyplot, no global backend change
    axes = fig.subplots(2, n, squeeze=False)
    for i in range(n):
        image, mask = make_sample(cfg, seed, split, i)
        axes[0, i].imshow(image, interpolation="nearest")
        axes[0, i].set_title("\n".join(names[c] for c in mask_classes(mask, cfg.num_classes, cfg.background)),
                             fontsize=7)
        axes[1, i].imshow(image, interpolation="nearest")
        shown = mask if cfg.background else mask + 1  # class c in VOC colour c + 1 in both conventions
        overlay = np.ma.masked_where(shown == 0, shown)
        axes[1, i].imshow(
            overlay, cmap=cmap, vmin=0, vmax=cfg.num_classes, alpha=0.6, interpolation="nearest"
        )
        for ax in axes[:, i]:
            ax.set_axis_off()
    fig.suptitle(f"synthetic WSSS ({cfg.image_size}px, K={cfg.num_classes}): images and masks", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=100)


def write_folder_dataset(
    out: str | os.PathLike[str],
    config: SyntheticConfig | Mapping[str, Any] | None = None,
    seed: int = 0,
    *,
    negatives: int | Mapping[str, int] = 0,
    labels_format: str = "csv",
) -> dict[str, Path]:
    """Write the synthetic set to disk as a user's own dataset would look: the input of ``prepare folder``.

    Layout under ``out``::

        images/<split>/<index>.png        # positives: the same images as SyntheticWSSS(split)
        images/<split>/negative_<j>.png   # ``negatives`` (per split, or {split: n}) images with no object
        masks/<split>/<name>.png          # class-index masks: 0 background, i = class i
        labels.csv | labels.json          # `image,labels` (names joined by ';'; empty = negative)
        classes.txt                       # line i = class i (the synthetic class names)
        splits/<split>.txt                # image paths relative to images/, for --splits

    Splits with no image (``num_test=0``) are left out. Returns the paths of images, masks, labels,
    classes and splits (the arguments ``prepare folder`` takes).
    """
    from PIL import Image

    if labels_format not in ("csv", "json"):
        raise ValueError(f"labels_format must be 'csv' or 'json', got {labels_format!r}")
    cfg = config if isinstance(config, SyntheticConfig) else SyntheticConfig.from_dict(config)
    if not cfg.background:
        raise ValueError("write_folder_dataset writes masks with 0 = background (what `prepare folder` reads); "
                         "it has no background=false variant: use data.dataset=synthetic with "
                         "data.synthetic.background=false instead")
    root = Path(out)
    paths = {"images": root / "images", "masks": root / "masks", "classes": root / "classes.txt",
             "labels": root / f"labels.{labels_format}", "splits": root / "splits"}
    names = class_names(cfg.num_classes)
    n_neg = {s: int(negatives.get(s, 0)) if isinstance(negatives, Mapping) else int(negatives) for s in SPLIT_CODES}
    rows: dict[str, list[str]] = {}
    for split in SPLIT_CODES:
        items = [(f"{i:06d}", i, True) for i in range(cfg.length(split))]
        items += [(f"negative_{j:04d}", j, False) for j in range(n_neg[split])]
        if not items:
            continue
        for d in ("images", "masks"):
            (paths[d] / split).mkdir(parents=True, exist_ok=True)
        listed = []
        for name, index, with_objects in items:
            image, mask = make_sample(cfg, seed, split, index, with_objects)
            rel = f"{split}/{name}.png"
            Image.fromarray(image).save(paths["images"] / rel)
            Image.fromarray(mask).save(paths["masks"] / rel)
            rows[rel] = [names[c] for c in mask_classes(mask, cfg.num_classes)]
            listed.append(rel)
        paths["splits"].mkdir(parents=True, exist_ok=True)
        (paths["splits"] / f"{split}.txt").write_text("".join(f"{r}\n" for r in listed), encoding="utf-8")
    paths["classes"].write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    if labels_format == "json":
        paths["labels"].write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    else:
        with open(paths["labels"], "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "labels"])
            writer.writerows([rel, ";".join(labels)] for rel, labels in rows.items())
    return paths
