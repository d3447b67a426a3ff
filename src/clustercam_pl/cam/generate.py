"""ClusterCAMs, single- and multi-scale, and the pseudo labels made from them.

References: DCVL-WSSS/ClusterCAM models.py (`MCTformerV2.forward`, `cam_only` branch) for the
single-scale CAM, utils.py `multi_scale_cam2` (from ToCo) for the multi-scale one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.profiler import record_function

from clustercam_pl.cam.config import CAMConfig, check_cam_layers
from clustercam_pl.cam.par import PAR
from clustercam_pl.cam.refine import denormalize, refine_with_background, refine_without_background, valid_cams
from clustercam_pl.models.clustercam import ClusterCAMNet
from clustercam_pl.models.utils import training_mode


@torch.no_grad()
def single_scale_cam(net: ClusterCAMNet, x: Tensor, cam_layers: int = 3, p2p_refine: bool = True) -> Tensor:
    """Single-scale ClusterCAM (B, K, h, w) of images x (B, 3, H, W), exactly the reference's `cam_only`.

    `ReLU(head conv without bias) * sum of the last `cam_layers` blocks' head-mean class-to-patch
    attention`, then (if `p2p_refine`) multiplied by the head-mean patch-to-patch attention summed
    over all blocks. No gradient: CAMs are targets, never differentiated.
    """
    check_cam_layers(cam_layers, net.cfg)
    inputs = net.cam_inputs(x, propagation=p2p_refine)
    B, K, h, w = inputs.class_maps.shape
    weight = inputs.c2p[:, -cam_layers:].mean(dim=2).sum(dim=1)  # (B, K, N)
    cam = F.relu(inputs.class_maps) * weight.reshape(B, K, h, w)  # (B, K, h, w)
    if not p2p_refine:
        return cam
    if inputs.qk is not None:
        propagated = propagate_with_attention(cam.flatten(2), inputs.qk, K)
    else:
        p2p = sum(inputs.p2p)  # (B, N, N)
        propagated = cam.flatten(2) @ p2p.transpose(1, 2)  # (B, K, N): cam[k, i] = sum_j P[i, j] cam[k, j]
    return propagated.reshape(B, K, h, w)


def propagate_with_attention(cam: Tensor, qk: list[tuple[Tensor, Tensor]], num_classes: int) -> Tensor:
    """`sum_l mean_heads(A_l[patches, patches]) @ cam` without forming any (N, N) matrix.

    The patch rows of block l's attention applied to values [0 for class keys; cam for patch keys]
    are exactly that product, so fused attention computes it from the kept queries and keys.

    Args:
        cam: (B, K, N) CAM to propagate; qk: per block (B, nh, T, d) queries and keys.
    Returns:
        (B, K, N).
    """
    B, K, N = cam.shape
    q0 = qk[0][0]
    nh, d = q0.shape[1], q0.shape[-1]
    scale = d**-0.5
    # Fused SDPA kernels need one width for queries, keys and values; any other value width falls
    # back to the math kernel, which forms the (N, T) matrix (about 3x slower on CPU). So zero-pad
    # the values (K < d) or the queries and keys (K > d: q . k is unchanged) to one width D.
    D = max(d, K)
    values = torch.cat([cam.new_zeros(B, num_classes, K), cam.transpose(1, 2)], dim=1)  # (B, T, K)
    values = F.pad(values, (0, D - K)).unsqueeze(1).expand(B, nh, num_classes + N, D)  # (B, nh, T, D)
    out = cam.new_zeros(B, N, D)
    for q, k in qk:
        q = q[:, :, num_classes:]  # (B, nh, N, d): patch queries only
        if D > d:
            q, k = F.pad(q, (0, D - d)), F.pad(k, (0, D - d))
        o = F.scaled_dot_product_attention(q, k, values, scale=scale)  # (B, nh, N, D)
        out += o.mean(dim=1)
    return out[..., :K].transpose(1, 2)  # (B, K, N)


@torch.no_grad()
def multi_scale_cam(
    net: ClusterCAMNet,
    images: Tensor,
    scales: Sequence[float] = (1.0, 0.75, 1.25),
    flip: bool = True,
    cam_layers: int = 3,
    p2p_refine: bool = True,
) -> Tensor:
    """CAMs at several scales (each with its horizontal flip), fused and min-max normalised.

    Per scale: resize bilinearly to (int(s * H), int(s * W)), run the image and its mirror in one
    batch, upsample to (H, W), take the max over the two, ReLU; then sum over scales and normalise
    each (image, class) map to [0, 1] as `(cam - min) / (max - min + 1e-5)`.

    Args:
        images: (B, 3, H, W) ImageNet-normalised.
    Returns:
        (B, K, H, W) in [0, 1]; classes are not masked by the image labels here.
    """
    B, _, H, W = images.shape
    total = None
    for s in scales:
        x = images if s == 1.0 else F.interpolate(
            images, size=(int(s * H), int(s * W)), mode="bilinear", align_corners=False
        )
        if flip:
            x = torch.cat([x, x.flip(-1)], dim=0)  # (2B, 3, h', w')
        cam = single_scale_cam(net, x, cam_layers, p2p_refine)  # (nB, K, h, w)
        cam = F.interpolate(cam, size=(H, W), mode="bilinear", align_corners=False)  # (nB, K, H, W)
        if flip:
            cam = torch.maximum(cam[:B], cam[B:].flip(-1))
        cam = F.relu(cam)
        total = cam if total is None else total + cam
    total = total - total.amin(dim=(2, 3), keepdim=True)
    return total / (total.amax(dim=(2, 3), keepdim=True) + 1e-5)


def par_image(net: ClusterCAMNet, images: Tensor, wrap_uint8: bool = True) -> Tensor:
    """The image PAR's colour affinity is computed on: (B, 3, H, W) in [0, 1].

    RGB inputs: the whole image, de-normalised with the network's mean / std (ImageNet's: the
    reference). N-band inputs (RGB-IR aerial tiles, multispectral): their first 3 bands, taken as the
    colour image (Potsdam's RGBIR order puts R, G, B first; Vaihingen's IRRG gives a false-colour one).
    """
    mean, std = net.cfg.normalization
    return denormalize(images[:, :3], mean[:3], std[:3], wrap_uint8=wrap_uint8)  # (B, 3, H, W)


@torch.no_grad()
def pseudo_label_step(
    net: ClusterCAMNet,
    par: PAR,
    cfg: CAMConfig,
    images: Tensor,
    cls_label: Tensor,
) -> tuple[Tensor, Tensor]:
    """Label-masked multi-scale CAMs (B, K, H, W) and their PAR-refined pseudo labels (B, H, W).

    The one implementation of the pseudo-label step (training, validation, export, benchmark): against
    the background scores when the network's data has a background class (`net.cfg.background`), else
    over the present classes alone (`refine_without_background`). A network in train mode makes its
    CAMs in train mode (drop-path on, as the reference) only if `cfg.train_mode`, else in eval mode; a
    network in eval mode stays in it. The mode is restored.
    Profilers see the two phases as `record_function` regions "cam" and "par".
    """
    with record_function("cam"), training_mode(net, cfg.train_mode and net.training):
        cams = multi_scale_cam(net, images, cfg.scales, cfg.flip, cfg.cam_layers, cfg.p2p_refine)  # (B, K, H, W)
    with record_function("par"):
        cams = valid_cams(cams, cls_label)  # absent classes zeroed
        image01 = par_image(net, images, cfg.wrap_uint8)  # (B, 3, H, W) in [0, 1]
        if net.cfg.background:
            pseudo = refine_with_background(par, image01, cams, cls_label, cfg.bg_high, cfg.bg_low, cfg.down_scale)
        else:
            pseudo = refine_without_background(par, image01, cams, cls_label, cfg.down_scale)
    return cams, pseudo
