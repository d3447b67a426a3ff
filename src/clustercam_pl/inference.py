"""Inference below the entry points: load a network from any checkpoint, predict segmentations, CRF.

The prediction follows the reference's final evaluation (DCVL-WSSS/ClusterCAM ``infer_e2e.py``,
method reference section 3.3): for each scale the full image is resized bilinearly with
``align_corners=True`` to ``(int(H*s), int(W*s))``, the decoder's logits are upsampled back to
``(H, W)`` (``align_corners=False``), soft-maxed, and the probabilities of all scales (and flips, when
asked; the reference uses none) are fused by an element-wise maximum. The dense CRF runs on the
de-normalised uint8 image with the reference's parameters.

Plain arguments only: no Hydra here (the entry points ``eval`` and ``pseudo_labels`` read configs).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from clustercam_pl.cam.config import CAMConfig
from clustercam_pl.cam.generate import make_pseudo_labels
from clustercam_pl.cam.par import PAR
from clustercam_pl.cam.pseudo_label import IMAGENET_MEAN, IMAGENET_STD
from clustercam_pl.lit_module import net_from_checkpoint
from clustercam_pl.models import ClusterCAMNet, from_official_checkpoint, load_checkpoint_file

CRF_MISSING = (
    "this protocol uses the dense CRF, which needs the optional dependency pydensecrf2: "
    "pip install 'clustercam_pl[crf]' (or pick a protocol without CRF: eval=ss, ms or ms_flip)"
)


# ---------------------------------------------------------------------------------------- device
def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None): the first CUDA device when there is one, else the CPU; otherwise as given."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(str(device))
    except RuntimeError as e:
        raise ValueError(f"device={device!r} is not a torch device (use auto, cpu, cuda or cuda:N)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} asked for CUDA, but torch sees no CUDA device (use device=auto)")
    return dev


# ----------------------------------------------------------------------------------- checkpoints
@dataclass
class LoadedCheckpoint:
    """A network and what its file says about where in training it was saved."""

    net: ClusterCAMNet
    path: str
    kind: str  # "framework" (Lightning, this package) or "reference" (official ClusterCAM)
    epoch: int | None
    global_step: int | None


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, Tensor) and value.numel() == 1:
        return int(value.item())
    return None


def load_checkpoint(path: str | os.PathLike, **reference_overrides: Any) -> LoadedCheckpoint:
    """Read a checkpoint once and rebuild its network (on the CPU, eval mode).

    A file with a ``clustercam`` section is a framework checkpoint and rebuilds from its stored
    network config. Anything else is treated as a reference checkpoint (``{"model": state_dict}``,
    ``module.`` prefixes allowed) and goes through ``from_official_checkpoint``;
    ``reference_overrides`` set what tensor shapes cannot tell (cam_layers, cluster_grid,
    cluster_iters, decoder_dilation, ...). They are refused for framework checkpoints, which carry
    their own config.
    """
    source = str(path)
    obj = load_checkpoint_file(path)  # FileNotFoundError / ValueError naming the file
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source}: expected a checkpoint dict, got {type(obj).__name__}")
    if "clustercam" in obj:
        if reference_overrides:
            raise ValueError(
                f"{source} is a framework checkpoint (it stores its own network config); "
                f"net_overrides={reference_overrides} only apply to reference checkpoints"
            )
        net = net_from_checkpoint(dict(obj), source)
        epoch, step = _int_or_none(obj.get("epoch")), _int_or_none(obj.get("global_step"))
        return LoadedCheckpoint(net.eval(), source, "framework", epoch, step)
    try:
        net = from_official_checkpoint(obj, **reference_overrides)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(
            f"{source} is neither a clustercam_pl checkpoint (no 'clustercam' section) nor a loadable "
            f"reference checkpoint: {e}. For reference checkpoints, settings that tensor shapes cannot "
            "tell are passed as net_overrides (e.g. +net_overrides.cam_layers=2 for a net of depth < 3)."
        ) from e
    epoch = _int_or_none(obj.get("epoch"))
    if epoch is None:  # the reference saves checkpoint_{epoch}.pth
        m = re.search(r"checkpoint_(\d+)\.pth$", Path(source).name)
        epoch = int(m.group(1)) if m else None
    return LoadedCheckpoint(net.eval(), source, "reference", epoch, None)


def load_network(path: str | os.PathLike, **reference_overrides: Any) -> ClusterCAMNet:
    """A ClusterCAMNet from a framework checkpoint or a reference checkpoint (eval mode, CPU)."""
    return load_checkpoint(path, **reference_overrides).net


# ------------------------------------------------------------------------------------ prediction
def size_groups(images: Tensor, image_size: Tensor | None) -> Iterator[tuple[list[int], int, int]]:
    """Index groups that can run as one batch: the whole batch when nothing is padded, else per image.

    A padded image must not be run padded: the network would see the padding and each scale would
    resize it with the image. Running each at its own size gives exactly the reference's result.
    """
    B, _, H, W = images.shape
    if image_size is None or bool((image_size[:, 0] == H).all() and (image_size[:, 1] == W).all()):
        yield list(range(B)), H, W
        return
    for i in range(B):
        yield [i], int(image_size[i, 0]), int(image_size[i, 1])


@torch.no_grad()
def _predict_unpadded(net: ClusterCAMNet, x: Tensor, scales: Sequence[float], flip: bool) -> Tensor:
    """Max-fused softmax (B, K+1, H, W) of images (B, 3, H, W) that all have their own size."""
    B, _, H, W = x.shape
    fused = None
    for s in scales:
        h, w = int(H * s), int(W * s)
        xs = x if (h, w) == (H, W) else F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True)
        if flip:
            xs = torch.cat([xs, xs.flip(-1)], dim=0)  # (2B, 3, h, w)
        logits = net(xs).seg_logits  # (nB, K+1, h/p, w/p)
        logits = F.interpolate(logits.float(), size=(H, W), mode="bilinear", align_corners=False)
        probs = logits.softmax(dim=1)  # (nB, K+1, H, W)
        if flip:
            probs = torch.maximum(probs[:B], probs[B:].flip(-1))  # (B, K+1, H, W)
        fused = probs if fused is None else torch.maximum(fused, probs)
    assert fused is not None
    return fused


@torch.no_grad()
def predict_segmentation(
    net: ClusterCAMNet,
    image: Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    image_size: Tensor | None = None,
) -> Tensor:
    """Segmentation probabilities (B, K+1, H, W) of ImageNet-normalised images (B, 3, H, W).

    The reference protocol (module docstring); ``flip`` adds the mirrored image at every scale to the
    max-fusion. ``image_size`` (B, 2) holds each image's (H, W) inside a padded batch: those images
    are predicted at their own size and the padding of the result is 0 (argmax: background; masks
    are 255 there, so scores are unaffected). The network runs in eval mode (restored afterwards).
    """
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be (B, 3, H, W), got {tuple(image.shape)}")
    if not scales or any(float(s) <= 0 for s in scales):
        raise ValueError(f"scales must be positive numbers, got {list(scales)}")
    B, _, H, W = image.shape
    was_training = net.training
    net.eval()
    try:
        out = image.new_zeros(B, net.num_classes + 1, H, W, dtype=torch.float32)  # (B, K+1, H, W)
        for idx, h, w in size_groups(image, image_size):
            x = image[idx, :, :h, :w]  # (n, 3, h, w) without padding
            out[idx, :, :h, :w] = _predict_unpadded(net, x, [float(s) for s in scales], flip)
    finally:
        net.train(was_training)
    return out


# --------------------------------------------------------------------------- CAMs, pseudo labels
@torch.no_grad()
def cams_and_pseudo_labels(
    net: ClusterCAMNet,
    par: PAR,
    image: Tensor,
    cls_label: Tensor,
    cam: CAMConfig,
    image_size: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Label-masked multi-scale CAMs (B, K, H, W) and PAR-refined pseudo labels (B, H, W), eval mode.

    The steps of ``ClusterCAMLitModule.pseudo_labels`` (``multi_scale_cam`` -> mask by the labels ->
    ``refine_pseudo_label`` on the de-normalised image) with the network in eval mode (no drop-path:
    an export is deterministic), whatever ``cam.train_mode`` says. Images of a padded batch run at
    their own size (the CAM's min-max normalisation and PAR must not see padding); the padding of the
    result is 0 for CAMs and ``cam.ignore_index`` for labels.
    """
    B, _, H, W = image.shape
    K = net.num_classes
    cams_out = image.new_zeros(B, K, H, W, dtype=torch.float32)  # (B, K, H, W)
    labels_out = torch.full((B, H, W), cam.ignore_index, dtype=torch.long, device=image.device)  # (B, H, W)
    was_training = net.training
    net.eval()
    try:
        for idx, h, w in size_groups(image, image_size):
            x, lab = image[idx, :, :h, :w], cls_label[idx]  # (n, 3, h, w), (n, K)
            cams, pseudo = make_pseudo_labels(net, par, cam, x, lab)  # (n, K, h, w), (n, h, w)
            cams_out[idx, :, :h, :w] = cams.float()
            labels_out[idx, :h, :w] = pseudo
    finally:
        net.train(was_training)
    return cams_out, labels_out


# ------------------------------------------------------------------------------------------ CRF
@dataclass(frozen=True)
class CRFParams:
    """Dense CRF settings; the defaults are the reference's (``seg/tool/imutils.crf_inference_inf``)."""

    n_iter: int = 10
    gauss_sxy: float = 4
    gauss_compat: float = 3
    bilat_sxy: float = 83
    bilat_srgb: float = 5
    bilat_compat: float = 3

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def require_crf() -> None:
    """Fail at once (before any checkpoint is read) when pydensecrf is missing, naming the extra."""
    try:
        import pydensecrf.densecrf  # noqa: F401
        import pydensecrf.utils  # noqa: F401
    except ImportError as e:
        raise ImportError(CRF_MISSING) from e


def to_uint8_image(
    image: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """ImageNet-normalised (3, H, W) -> uint8 (H, W, 3) RGB, rounded and clamped (never wrapped).

    Rounding (not truncation) gives back the exact pixels of the decoded file: normalising and
    de-normalising in float32 leaves errors of ~1e-5 levels either way. Clamping keeps an
    out-of-range value at 0 or 255, where the reference's uint8 cast would wrap it around.
    """
    m = torch.tensor(mean, dtype=torch.float32, device=image.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=image.device).view(3, 1, 1)
    levels = ((image.float() * s + m) * 255).round().clamp(0, 255)  # (3, H, W)
    return np.ascontiguousarray(levels.to(torch.uint8).permute(1, 2, 0).cpu().numpy())  # (H, W, 3)


def crf_refine(
    image: Tensor, probs: Tensor, image_size: Tensor | None = None, params: CRFParams | None = None
) -> Tensor:
    """CRF marginals (B, C, H, W) of ``probs`` (B, C, H, W) on the images (B, 3, H, W), per image.

    Each image is cropped to its ``image_size`` (padding is not part of the image); the padding of
    the result is 0. Runs on the CPU (pydensecrf); the result comes back on ``probs.device``.
    """
    from clustercam_pl.cam.crf import dense_crf

    params = params or CRFParams()
    B, C, H, W = probs.shape
    out = torch.zeros_like(probs, dtype=torch.float32)  # (B, C, H, W)
    for i in range(B):
        h, w = (int(image_size[i, 0]), int(image_size[i, 1])) if image_size is not None else (H, W)
        rgb = to_uint8_image(image[i, :, :h, :w])  # (h, w, 3)
        p = probs[i, :, :h, :w].float().cpu().numpy()  # (C, h, w)
        out[i, :, :h, :w] = torch.from_numpy(dense_crf(rgb, p, **params.as_dict())).to(probs.device)
    return out


def crop_predictions(pred: Tensor, image_size: Tensor | None) -> list[Tensor]:
    """Label maps (B, H, W) of a padded batch -> one (h_i, w_i) map per image."""
    if image_size is None:
        return list(pred.unbind(0))
    return [pred[i, : int(image_size[i, 0]), : int(image_size[i, 1])] for i in range(pred.shape[0])]
