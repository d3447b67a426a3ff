"""Pictures of what the method computes: attention maps, ClusterCAMs, pseudo labels, clusters.

Used by the training image logger and the notebook; needs matplotlib only when rendering.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from clustercam_pl.cam.pseudo_label import denormalize


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (n, 3) uint8; index 255 (ignore) is white."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    if n > 255:
        pal[255] = (255, 255, 255)
    return pal


def _present_max(maps: Tensor, cls_label: Tensor) -> Tensor:
    """(B, K, H, W) -> (B, H, W): max over the classes present in the image, each map scaled to [0, 1]."""
    maps = maps - maps.amin(dim=(2, 3), keepdim=True)
    maps = maps / maps.amax(dim=(2, 3), keepdim=True).clamp_min(1e-8)
    maps = torch.where(cls_label[:, :, None, None] > 0, maps, torch.zeros_like(maps))
    return maps.amax(dim=1)


@torch.no_grad()
def cam_panels(module: Any, image: Tensor, cls_label: Tensor, mask: Tensor | None = None) -> dict[str, np.ndarray]:
    """Maps for a few images, computed by a `ClusterCAMLitModule` in eval mode.

    Returns arrays stacked over the images: `image` (B, H, W, 3) float in [0, 1]; `patch_to_class`,
    `cluster_to_class`, `clustercam` (B, H, W) in [0, 1] (max over present classes, last
    `cam_layers` blocks, head mean); `pseudo_label` (B, H, W) int; `assignment` (B, h, w) hard
    cluster index of each patch in the last block; `mask` if given.
    """
    net = module.net
    was_training = net.training
    net.eval()
    try:
        H, W = image.shape[-2:]
        out = net(image, with_seg=False, record=True)
        n = net.cam_layers
        recs = out.attention[-n:]
        up = lambda m: F.interpolate(m, size=(H, W), mode="bilinear", align_corners=False)  # noqa: E731
        h, w = out.features.shape[-2:]
        B, K = cls_label.shape
        c2p = sum(r.c2p.mean(1) for r in recs).reshape(B, K, h, w)
        mapped = [r.c2clu_mapped for r in recs if r.c2clu_mapped is not None]
        c2clu = sum(m.mean(1) for m in mapped).reshape(B, K, h, w) if mapped else torch.zeros_like(c2p)
        cams, pseudo = module.pseudo_labels(image, cls_label)
        last = out.attention[-1]
        assign = last.assign.argmax(-1).reshape(B, h, w) if last.assign is not None else torch.zeros(B, h, w)
    finally:
        net.train(was_training)
    panels = {
        "image": denormalize(image, wrap_uint8=False).permute(0, 2, 3, 1).cpu().numpy(),
        "patch_to_class": _present_max(up(c2p), cls_label).cpu().numpy(),
        "cluster_to_class": _present_max(up(c2clu), cls_label).cpu().numpy(),
        "clustercam": _present_max(cams, cls_label).cpu().numpy(),
        "pseudo_label": pseudo.cpu().numpy(),
        "assignment": assign.cpu().numpy(),
    }
    if mask is not None:
        panels["mask"] = mask.cpu().numpy()
    return panels


def render_panels(panels: dict[str, np.ndarray], dpi: int = 80) -> np.ndarray:
    """One row per image, one column per panel; returns an (H, W, 3) uint8 picture."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = [k for k in ("image", "mask", "patch_to_class", "cluster_to_class", "clustercam",
                         "pseudo_label", "assignment") if k in panels]
    B = panels["image"].shape[0]
    pal = voc_palette()
    fig, axes = plt.subplots(B, len(names), figsize=(2.2 * len(names), 2.2 * B), squeeze=False)
    for i in range(B):
        for j, name in enumerate(names):
            ax = axes[i, j]
            x = panels[name][i]
            if name in ("mask", "pseudo_label"):
                ax.imshow(pal[x.astype(np.int64).clip(0, 255)])
            elif name == "assignment":
                ax.imshow(x, cmap="tab20", interpolation="nearest")
            elif name == "image":
                ax.imshow(x.clip(0, 1))
            else:
                ax.imshow(panels["image"][i].clip(0, 1))
                ax.imshow(x, cmap="jet", alpha=0.5, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name.replace("_", " "), fontsize=8)
    fig.tight_layout()
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return img
