"""Pictures of what the method computes: attention maps, ClusterCAMs, pseudo labels, clusters.

Used by the training image logger, the notebook (`notebooks/clustercam_tour.ipynb`) and `predict`
(overlays and CAM heat maps of predictions, `overlay_image` / `cam_image`). The computing functions
return numpy arrays; the figure functions build `matplotlib.figure.Figure` objects without pyplot, so
they never switch the backend of a notebook or a training process.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn

from clustercam_pl.cam.refine import denormalize, valid_cams
from clustercam_pl.data.imageio import label_palette
from clustercam_pl.data.labels import IGNORE_INDEX, class_offset, label_names
from clustercam_pl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from clustercam_pl.models.utils import training_mode

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


PANEL_ORDER = (
    "image", "mask", "patch_to_class", "cluster_to_class", "clustercam", "pseudo_label", "assignment"
)
PANEL_TITLES = {
    "image": "input",
    "mask": "ground truth",
    "patch_to_class": "patch-to-class attn",
    "cluster_to_class": "cluster-to-class attn",
    "clustercam": "ClusterCAM",
    "pseudo_label": "pseudo label",
    "assignment": "clusters (last block)",
}


IGNORE_COLOUR = (255, 255, 255)  # how figures draw label 255 (ignore): white, unlike the PNG palette


def label_colours(background: bool = True) -> np.ndarray:
    """(256, 3) uint8 colours of label values in figures: the PNG palette's (VOC colours; without a
    background class shifted so that a class keeps its colour, `label_palette`), ignore (255) white."""
    pal = np.array(label_palette(background), dtype=np.uint8).reshape(256, 3)
    pal[255] = IGNORE_COLOUR
    return pal


# -------------------------------------------------------------------------------------- computing
def _normalize_present(maps: Tensor, cls_label: Tensor) -> Tensor:
    """(B, K, H, W): each map min-max scaled to [0, 1], the classes absent from the image zeroed."""
    maps = maps - maps.amin(dim=(2, 3), keepdim=True)
    maps = maps / maps.amax(dim=(2, 3), keepdim=True).clamp_min(1e-8)
    return valid_cams(maps, (cls_label > 0).to(maps.dtype))


def _present_max(maps: Tensor, cls_label: Tensor) -> Tensor:
    """(B, K, H, W) -> (B, H, W): max over the classes present in the image, each map scaled to [0, 1]."""
    return _normalize_present(maps, cls_label).amax(dim=1)


@torch.no_grad()
def class_maps(module: Any, image: Tensor, cls_label: Tensor) -> dict[str, np.ndarray]:
    """Per-class maps of a `ClusterCAMLitModule` in eval mode, for images (B, 3, H, W).

    Returns `patch_to_class`, `cluster_to_class`, `clustercam`: (B, K, H, W) in [0, 1], each map
    min-max scaled on its own, zero for the classes absent from `cls_label` (B, K).

    * patch-to-class: the class tokens' attention to the patches in the standard MHSA (the map of
      MCTformer), head mean, summed over the last `cam_layers` blocks;
    * cluster-to-class: the class tokens' attention to the cluster tokens, mapped back to the patches
      through the soft assignment (`S @ A_class->cluster`), same blocks (zero without cluster blocks);
    * clustercam: the multi-scale, flipped, patch-to-patch refined CAM the pseudo labels are made of.

    Also `pseudo_label` (B, H, W) int (0 background, c + 1 class c, 255 ignore; a network without a
    background class: c = class c) and `assignment`
    (B, h, w) hard cluster index of each patch in the last block.
    """
    net = module.net
    H, W = image.shape[-2:]
    B, K = cls_label.shape
    with training_mode(net, False):
        out = net.forward_intermediates(image, with_seg=False)
        recs = out.attention[-module.cam_cfg.cam_layers:]
        h, w = out.features.shape[-2:]
        c2p = sum(r.c2p.mean(1) for r in recs).reshape(B, K, h, w)  # (B, K, h, w)
        mapped = [r.c2clu_mapped for r in recs if r.c2clu_mapped is not None]
        c2clu = sum(m.mean(1) for m in mapped).reshape(B, K, h, w) if mapped else torch.zeros_like(c2p)
        cams, pseudo = module.segmentation_targets(image, cls_label)  # (B, K, H, W), (B, H, W)
        last = out.attention[-1]
        assign = last.assign.argmax(-1).reshape(B, h, w) if last.assign is not None else torch.zeros(B, h, w)

    def up(m: Tensor) -> Tensor:
        return F.interpolate(m, size=(H, W), mode="bilinear", align_corners=False)

    return {
        "patch_to_class": _normalize_present(up(c2p), cls_label).cpu().numpy(),
        "cluster_to_class": _normalize_present(up(c2clu), cls_label).cpu().numpy(),
        "clustercam": _normalize_present(cams, cls_label).cpu().numpy(),
        "pseudo_label": pseudo.cpu().numpy(),
        "assignment": assign.cpu().numpy(),
    }


@torch.no_grad()
def cam_panels(
    module: Any, image: Tensor, cls_label: Tensor, mask: Tensor | None = None
) -> dict[str, np.ndarray]:
    """Maps for a few images, computed by a `ClusterCAMLitModule` in eval mode.

    Returns arrays stacked over the images: `image` (B, H, W, 3) float in [0, 1]; `patch_to_class`,
    `cluster_to_class`, `clustercam` (B, H, W) in [0, 1] (max over present classes, last
    `cam_layers` blocks, head mean); `pseudo_label` (B, H, W) int; `assignment` (B, h, w) hard
    cluster index of each patch in the last block; `mask` if given. See `class_maps` for what each
    map is.
    """
    maps = class_maps(module, image, cls_label)
    panels = {"image": image_01(image, module.net)}
    for name in ("patch_to_class", "cluster_to_class", "clustercam"):
        panels[name] = maps[name].max(axis=1)  # (B, H, W)
    panels["pseudo_label"] = maps["pseudo_label"]
    panels["assignment"] = maps["assignment"]
    if mask is not None:
        panels["mask"] = mask.cpu().numpy()
    return panels


def image_01(image: Tensor, net: Any = None) -> np.ndarray:
    """Normalised (B, N, H, W) -> (B, H, W, 3) float in [0, 1] for display: the first 3 bands, de-normalised
    with the network's mean / std (`net.cfg.normalization`; ImageNet's without a network)."""
    cfg = getattr(net, "cfg", None)
    mean, std = cfg.normalization if hasattr(cfg, "normalization") else (IMAGENET_MEAN, IMAGENET_STD)
    return denormalize(image[:, :3], mean[:3], std[:3], wrap_uint8=False).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def cluster_assignments(
    net: nn.Module, image: Tensor, blocks: Sequence[int] = (0, -1)
) -> list[dict[str, Any]]:
    """How the cluster tokens of some blocks gather the patches of images (B, 3, H, W).

    `blocks` index the backbone blocks (negative from the end); each must have the cluster module.
    Returns per block a dict: `block` (its index from 0), `soft` (B, M, h, w) soft assignment of each
    patch to each cluster (sums to 1 over M), `hard` (B, h, w) its argmax, `cluster_grid` (mh, mw) the
    layout of the M initial cluster tokens (each the mean of a cell of patches), `patch_grid` (h, w),
    `alpha` the block's mixing weight of the cluster-to-class map in its CAM feature.
    """
    depth = len(net.backbone.blocks)
    idx = [b % depth for b in blocks]
    with training_mode(net, False):
        out = net.forward_intermediates(image, with_seg=False)
    h, w = out.features.shape[-2:]
    alphas = net.alphas().detach()  # (L_c,) in block order
    result = []
    for b in idx:
        rec = out.attention[b]
        if rec.assign is None:
            have = [i for i, blk in enumerate(net.backbone.blocks) if blk.cluster]
            raise ValueError(f"block {b} has no cluster module; blocks with one: {have}")
        B, N, M = rec.assign.shape
        soft = rec.assign.transpose(1, 2).reshape(B, M, h, w)  # (B, M, h, w)
        result.append({
            "block": b,
            "soft": soft.cpu().numpy(),
            "hard": soft.argmax(1).cpu().numpy(),  # (B, h, w)
            "cluster_grid": tuple(rec.cluster_grid),
            "patch_grid": (h, w),
            "alpha": float(alphas[sum(blk.cluster for blk in net.backbone.blocks[:b])].clamp(0, 1)),
        })
    return result


# ---------------------------------------------------------------------------------------- drawing
def figure(width: float, height: float, dpi: int = 100) -> Figure:
    """A figure on the Agg canvas, without pyplot (no global backend change, nothing left open)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def label_image(x: np.ndarray, background: bool = True) -> np.ndarray:
    """(..., 3) uint8 colours of a label map (``background``: its label convention)."""
    return label_colours(background)[x.astype(np.int64).clip(0, 255)]


def class_legend(fig: Figure, class_names: Sequence[str], background: bool = True) -> None:
    from matplotlib.patches import Patch

    pal = label_colours(background) / 255.0
    names = label_names(class_names, background)
    handles = [Patch(facecolor=pal[i], edgecolor="k", label=n) for i, n in enumerate(names)]
    handles.append(Patch(facecolor="white", edgecolor="k", label="ignore"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)


def panel_figure(
    panels: dict[str, np.ndarray], class_names: Sequence[str] | None = None, dpi: int = 80, background: bool = True
) -> Figure:
    """One row per image, one column per panel of `cam_panels` (and a class legend if names are given);
    ``background``: the label convention of the masks and pseudo labels (the network's ``cfg.background``)."""
    names = [k for k in PANEL_ORDER if k in panels]
    B = panels["image"].shape[0]
    legend = 0.5 if class_names else 0.0
    fig = figure(2.2 * len(names), 2.2 * B + legend, dpi=dpi)
    axes = fig.subplots(B, len(names), squeeze=False)
    for i in range(B):
        for j, name in enumerate(names):
            ax = axes[i, j]
            x = panels[name][i]
            if name in ("mask", "pseudo_label"):
                ax.imshow(label_image(x, background), interpolation="nearest")
            elif name == "assignment":
                ax.imshow(cluster_colours(20)[x.astype(np.int64) % 20][..., :3], interpolation="nearest")
            elif name == "image":
                ax.imshow(x.clip(0, 1))
            else:
                ax.imshow(panels["image"][i].clip(0, 1))
                ax.imshow(x, cmap="jet", alpha=0.5, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(PANEL_TITLES.get(name, name), fontsize=9)
    if class_names:
        class_legend(fig, class_names, background)
    fig.tight_layout(rect=(0, legend / (2.2 * B + legend), 1, 1))
    return fig


def render_panels(panels: dict[str, np.ndarray], dpi: int = 80, background: bool = True) -> np.ndarray:
    """One row per image, one column per panel; returns an (H, W, 3) uint8 picture."""
    fig = panel_figure(panels, dpi=dpi, background=background)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def class_map_figure(
    image: np.ndarray,
    maps: dict[str, np.ndarray],
    cls_label: np.ndarray | Tensor,
    class_names: Sequence[str] | None = None,
    mask: np.ndarray | Tensor | None = None,
    background: bool = True,
) -> Figure:
    """Per-class maps of one image side by side: one row per class present, one column per map.

    `image` (H, W, 3) in [0, 1]; `maps` from `class_maps` indexed at that image, i.e. (K, H, W) each;
    `cls_label` (K,); `mask` (H, W) adds a column with the class's ground-truth region (``background``:
    the mask's label convention).
    """
    kinds = [k for k in ("patch_to_class", "cluster_to_class", "clustercam") if k in maps]
    present = [int(c) for c in np.flatnonzero(np.asarray(cls_label) > 0)]
    cols = len(kinds) + (mask is not None)
    fig = figure(2.2 * cols, 2.2 * max(len(present), 1))
    axes = fig.subplots(max(len(present), 1), cols, squeeze=False)
    for r, c in enumerate(present):
        name = class_names[c] if class_names else f"class {c}"
        for j, kind in enumerate(kinds):
            ax = axes[r, j]
            ax.imshow(image.clip(0, 1))
            ax.imshow(maps[kind][c], cmap="jet", alpha=0.5, vmin=0, vmax=1)
            if r == 0:
                ax.set_title(PANEL_TITLES[kind], fontsize=9)
        if mask is not None:
            ax = axes[r, -1]
            ax.imshow(image.clip(0, 1))
            ax.imshow(np.asarray(mask) == c + class_offset(background), cmap="gray", alpha=0.6, vmin=0, vmax=1)
            if r == 0:
                ax.set_title("ground truth", fontsize=9)
        axes[r, 0].set_ylabel(name, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def _cell_bounds(n: int, m: int) -> list[tuple[int, int]]:
    """Patch ranges [start, end) of the m cells `adaptive_avg_pool` averages along n patches."""
    return [(math.floor(i * n / m), math.ceil((i + 1) * n / m)) for i in range(m)]


def cluster_colours(m: int) -> np.ndarray:
    """(m, 4) RGBA colours for m clusters, neighbours in index far apart in colour (tab20, reordered)."""
    from matplotlib import colormaps

    order = np.r_[0:20:2, 1:20:2]  # the 10 saturated tab20 colours first, then their light partners
    return colormaps["tab20"](order[np.arange(m) % 20])


def draw_assignment(ax: Axes, image: np.ndarray, assignment: dict[str, Any], index: int = 0) -> None:
    """The hard cluster assignment of one image as coloured patches over the image.

    Each cluster has one colour: its patches are filled with it, the cell of patches its token was
    initialised from is outlined (dashed) in it, and a dot marks the assignment-weighted centre of
    the patches it gathers now. A dot far from its outline = a cluster that moved to content.
    """
    from matplotlib import patheffects
    from matplotlib.patches import Rectangle

    H, W = image.shape[:2]
    h, w = assignment["patch_grid"]
    mh, mw = assignment["cluster_grid"]
    soft = assignment["soft"][index]  # (M, h, w)
    hard = assignment["hard"][index]  # (h, w)
    M = soft.shape[0]
    colours = cluster_colours(M)
    sy, sx = H / h, W / w  # pixels per patch
    ax.imshow(image.clip(0, 1))
    ax.imshow(colours[hard][..., :3], alpha=0.6, extent=(0, W, H, 0), interpolation="nearest")
    ys, xs = (np.arange(h) + 0.5) * sy, (np.arange(w) + 0.5) * sx
    rows, cols = _cell_bounds(h, mh), _cell_bounds(w, mw)
    inset = 0.12  # patches: outlines of neighbouring cells stay apart
    outline = [patheffects.withStroke(linewidth=3.5, foreground="k")]
    for m in range(M):
        (r0, r1), (c0, c1) = rows[m // mw], cols[m % mw]
        ax.add_patch(Rectangle(((c0 + inset) * sx, (r0 + inset) * sy), (c1 - c0 - 2 * inset) * sx,
                               (r1 - r0 - 2 * inset) * sy, fill=False, edgecolor=colours[m],
                               linewidth=2, linestyle="--", path_effects=outline))
        weight = soft[m]
        if weight.sum() > 1e-6:
            cy = float((weight.sum(1) * ys).sum() / weight.sum())
            cx = float((weight.sum(0) * xs).sum() / weight.sum())
            ax.plot(cx, cy, "o", color=colours[m], markeredgecolor="k", markersize=7)
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    ax.set_xticks([])
    ax.set_yticks([])


def assignment_figure(
    image: np.ndarray, assignments: Sequence[dict[str, Any]], index: int = 0, max_clusters: int = 16
) -> Figure:
    """For each block of `cluster_assignments`: the coloured hard assignment, then every cluster's
    soft assignment map (which patches its token gathers; framed in the cluster's colour, up to
    `max_clusters` clusters). `image` (H, W, 3) in [0, 1] is image `index` of the assignments."""
    M = min(assignments[0]["soft"].shape[1], max_clusters)
    colours = cluster_colours(M)
    fig = figure(1.5 * (M + 2) + 0.5, 3.2 * len(assignments))
    axes = fig.subplots(len(assignments), 1 + M, squeeze=False, gridspec_kw={"width_ratios": [2] + [1] * M})
    for r, a in enumerate(assignments):
        draw_assignment(axes[r, 0], image, a, index)
        axes[r, 0].set_title(f"block {a['block']} (alpha {a['alpha']:.2f})", fontsize=8)
        soft = a["soft"][index]  # (M, h, w)
        vmax = max(float(soft.max()), 1e-6)  # one scale per block: the clusters stay comparable
        for m in range(M):
            ax = axes[r, 1 + m]
            ax.imshow(soft[m], cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(colours[m])
                spine.set_linewidth(3)
            if r == 0:
                ax.set_title(f"cluster {m}", fontsize=8)
    fig.tight_layout()
    return fig


def metrics_figure(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> Figure:
    """Validation curves: `rows` of per-epoch metrics (e.g. the CSV logger's), one line per key."""
    fig = figure(5.5, 3.2)
    ax = fig.subplots()
    for key in keys:
        pts = [(float(r["epoch"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------- pictures of predictions
OVERLAY_ALPHA = 0.5  # weight of the class colour over a pixel of a class (not background, not void)
CAM_ALPHA = 0.5  # weight of the heat map over the image


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def row_strips(height: int, width: int, pixels: int = 1 << 20) -> Iterator[slice]:
    """Row ranges of about `pixels` pixels: per-pixel float maths in strips keeps a 100-megapixel
    picture's temporaries at a few MB instead of several GB, with the same result."""
    rows = max(1, pixels // max(width, 1))
    return (slice(y, y + rows) for y in range(0, height, rows))


def overlay_image(
    rgb: np.ndarray, label: np.ndarray, class_names: Sequence[str], background: bool = True
) -> np.ndarray:
    """uint8 (H, W, 3): the image with the pixels of a class blended with the colour of their class, and
    a legend (colour, name) of the classes present in the top-left corner. ``background``: the label
    convention (with one, value 0 is background and stays unblended; without, value 0 is class 0)."""
    pal = label_colours(background).astype(np.float32)  # (256, 3)
    first = class_offset(background)  # the label value of class 0
    blended = np.empty_like(rgb)  # (H, W, 3) uint8
    for rows in row_strips(*label.shape):
        out = rgb[rows].astype(np.float32)  # (r, W, 3)
        fg = label[rows] > 0 if background else label[rows] != IGNORE_INDEX  # (r, W)
        out[fg] = (1 - OVERLAY_ALPHA) * out[fg] + OVERLAY_ALPHA * pal[label[rows][fg]]
        blended[rows] = np.rint(out).clip(0, 255).astype(np.uint8)
    counts = sum(np.bincount(label[rows].ravel(), minlength=256) for rows in row_strips(*label.shape))  # (256,)
    present = [int(v) for v in np.flatnonzero(counts) if v >= first and (background or v != IGNORE_INDEX)]
    if present:
        H, W = label.shape
        size = int(np.clip(min(H, W) / 16, 10, 28))
        pad, row = max(size // 4, 2), size + max(size // 4, 2)
        names = [class_names[v - first] if v - first < len(class_names) else f"class_{v + 1 - first}"
                 for v in present]
        font = _font(size)
        width = max(font.getlength(n) for n in names) + size + 3 * pad
        bottom = row * len(names) + pad
        # drawn on the corner it covers only: no full-size PIL copy of a 100-megapixel picture
        corner = (slice(0, min(H, math.ceil(bottom) + 2)), slice(0, min(W, math.ceil(width) + 2)))
        im = Image.fromarray(np.ascontiguousarray(blended[corner]))
        draw = ImageDraw.Draw(im)
        draw.rectangle((0, 0, width, bottom), fill=(255, 255, 255))
        for i, (v, name) in enumerate(zip(present, names, strict=True)):
            y = pad + i * row
            draw.rectangle((pad, y, pad + size, y + size), fill=tuple(int(c) for c in pal[v]), outline=(0, 0, 0))
            draw.text((2 * pad + size, y), name, fill=(0, 0, 0), font=font)
        blended[corner] = np.asarray(im)
    return blended


def cam_image(rgb: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3): the image blended with the jet heat map of a CAM (H, W) in [0, 1]."""
    out = np.empty_like(rgb)  # (H, W, 3) uint8
    for rows in row_strips(*cam.shape):
        heat = cv2.applyColorMap(np.rint(cam[rows].clip(0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
        out[rows] = np.rint((1 - CAM_ALPHA) * rgb[rows] + CAM_ALPHA * heat).clip(0, 255).astype(np.uint8)
    return out
