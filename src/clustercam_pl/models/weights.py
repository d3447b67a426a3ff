"""Weights in and out: reference (official) checkpoints and ImageNet DeiT/ViT initialisation.

Checkpoints are always read with `torch.load(..., weights_only=True)`: a file someone sent cannot run
code. Our parameter names inside `backbone.` are the reference's, so conversion is a prefix.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from clustercam_pl.models.clustercam import ClusterCAMNet

_BACKBONE_KEYS = ("cls_token", "pos_embed", "patch_embed.", "blocks.")
# The reference keeps DeiT's final LayerNorm but never applies it; we do not build it.
_UNUSED_REFERENCE_KEYS = ("norm.weight", "norm.bias")


def load_checkpoint_file(path: str | os.PathLike) -> Any:
    """torch.load with weights_only=True and errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle with code, foreign format
        raise ValueError(
            f"cannot read checkpoint {path} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "It may be truncated (an interrupted copy or save) or not a PyTorch weights file; "
            "checkpoints are read with weights_only=True, so files that need arbitrary code are refused."
        ) from e


def _unwrap(obj: Any, source: str) -> dict[str, Tensor]:
    sd = obj
    if isinstance(sd, Mapping) and "model" in sd and isinstance(sd["model"], Mapping):
        sd = sd["model"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ValueError(f"{source}: expected a state dict (or {{'model': state_dict}}) of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def reference_to_ours(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Reference (MCTformerV2) names -> ClusterCAMNet names; drops the unused final norm."""
    out = {}
    for k, v in sd.items():
        if k in _UNUSED_REFERENCE_KEYS:
            continue
        out[("backbone." + k) if k.startswith(_BACKBONE_KEYS) else k] = v
    return out


def ours_to_reference(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """ClusterCAMNet names -> reference names (without the unused final norm)."""
    return {k.removeprefix("backbone."): v for k, v in sd.items()}


def infer_config(sd: Mapping[str, Tensor]) -> dict[str, Any]:
    """Architecture of a reference-format state dict, read off tensor shapes.

    The head count is not visible in any single weight; it follows from the CAM head's input width
    `C + depth * nh * K`.
    """
    try:
        _, K, C = sd["cls_token"].shape
        depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
        head_in = sd["head.weight"].shape[1]
        patch = sd["patch_embed.proj.weight"].shape[-1]
        pos_n = sd["pos_embed"].shape[1] - K
        mlp_hidden = sd["blocks.0.mlp.fc1.weight"].shape[0]
        width = sd["decoder.conv6.weight"].shape[0]
    except (KeyError, ValueError) as e:
        raise ValueError(f"not a ClusterCAM reference state dict: missing or malformed {e}") from e
    nh, rem = divmod(head_in - C, depth * K)
    grid = round(pos_n**0.5)
    if rem or nh < 1 or grid * grid != pos_n:
        raise ValueError(
            f"inconsistent shapes: head.weight in-channels {head_in} is not embed_dim {C} + depth {depth} "
            f"x heads x K {K}, or pos_embed patch count {pos_n} is not a square"
        )
    cluster = [i for i in range(depth) if f"blocks.{i}.st_attn.mix_param" in sd]
    return dict(
        num_classes=K, embed_dim=C, depth=depth, num_heads=nh, mlp_ratio=mlp_hidden / C, patch_size=patch,
        pos_grid=grid, cluster_blocks=cluster, decoder_width=width,
    )


def load_state_dict_checked(net: ClusterCAMNet, sd: Mapping[str, Tensor], source: str) -> None:
    """Strict load whose errors name each tensor and both shapes."""
    own = net.state_dict()
    problems = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in sd.items() if k in own and own[k].shape != v.shape
    ]
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if problems or missing or unexpected:
        lines = [f"{source} does not fit the model (num_classes={net.num_classes}, "
                 f"embed_dim={net.backbone.embed_dim}, depth={net.backbone.depth}):"]
        lines += [f"  shape mismatch {p}" for p in problems[:10]]
        if missing:
            lines.append(f"  missing in checkpoint: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        if unexpected:
            lines.append(f"  not in model: {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
        raise ValueError("\n".join(lines))
    net.load_state_dict(sd)


def from_official_checkpoint(
    path_or_state_dict: str | os.PathLike | Mapping[str, Any], **overrides: Any
) -> ClusterCAMNet:
    """Build and load a ClusterCAMNet from a reference checkpoint (`{"model": {"module.<name>": ...}}`).

    The wrapper and the `module.` prefix may be absent. Embed dim, depth, heads, K, patch size and
    which blocks cluster are inferred from the tensors; `overrides` set what shapes cannot tell
    (cluster_grid, cluster_iters, cam_layers, decoder_dilation, fused_attention, ...).
    """
    if isinstance(path_or_state_dict, Mapping):
        source, obj = "state dict", path_or_state_dict
    else:
        source, obj = str(path_or_state_dict), load_checkpoint_file(path_or_state_dict)
    sd = _unwrap(obj, source)
    cfg = infer_config(sd) | overrides
    net = ClusterCAMNet(**cfg)
    load_state_dict_checked(net, reference_to_ours(sd), source)
    return net


# --------------------------------------------------------------------------------------------------
# ImageNet initialisation (reference: DCVL-WSSS/ClusterCAM main.py, the `--finetune` branch)


def imagenet_to_ours(vit_sd: Mapping[str, Tensor], net: ClusterCAMNet) -> dict[str, Tensor]:
    """Map a DeiT/ViT (timm layout) state dict onto ClusterCAMNet's backbone, as the reference does.

    The single class token and its position are copied to all K; the patch position embedding is
    resized (bicubic) to the model's grid; each block's `norm1` initialises all four attention norms
    and `attn.qkv` / `attn.proj` initialise both attention branches. `proj_st`, `mix_param`, the CAM
    head and the decoder keep their random init.
    """
    bb = net.backbone
    K, C = bb.num_classes, bb.embed_dim
    out: dict[str, Tensor] = {}
    cls = vit_sd["cls_token"]  # (1, 1, C)
    if cls.shape[-1] != C:
        raise ValueError(f"pretrained width {cls.shape[-1]} != model embed_dim {C}")
    out["backbone.cls_token"] = cls[:, :1].expand(1, K, C).clone()
    pos = vit_sd["pos_embed"]  # (1, 1 + g0*g0, C) (timm/DeiT: one class token)
    g0 = round((pos.shape[1] - 1) ** 0.5)
    g = round((bb.pos_embed.shape[1] - K) ** 0.5)
    patch_pos = pos[:, -g0 * g0:].reshape(1, g0, g0, C).permute(0, 3, 1, 2)  # (1, C, g0, g0)
    if g0 != g:
        patch_pos = F.interpolate(patch_pos, size=(g, g), mode="bicubic", align_corners=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, g * g, C)
    out["backbone.pos_embed"] = torch.cat([pos[:, :1].expand(1, K, C), patch_pos], dim=1)
    for k in ("patch_embed.proj.weight", "patch_embed.proj.bias"):
        out["backbone." + k] = vit_sd[k]
    for i, blk in enumerate(bb.blocks):
        src = f"blocks.{i}."
        dst = f"backbone.blocks.{i}."
        for part in ("norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"):
            out[dst + part] = vit_sd[src + part]
        if blk.cluster:
            a = dst + "st_attn."
            for ln in ("ln_pat", "ln_pat2", "ln_cls", "ln_st"):
                for p in ("weight", "bias"):
                    out[f"{a}{ln}.{p}"] = vit_sd[f"{src}norm1.{p}"]
            for ours, theirs in (("qkv", "qkv"), ("qkv_stsa", "qkv"), ("proj", "proj"), ("proj_cls", "proj")):
                for p in ("weight", "bias"):
                    out[f"{a}{ours}.{p}"] = vit_sd[f"{src}attn.{theirs}.{p}"]
        else:
            for p in ("weight", "bias"):
                out[f"{dst}attn.norm1.{p}"] = vit_sd[f"{src}norm1.{p}"]
                out[f"{dst}attn.qkv.{p}"] = vit_sd[f"{src}attn.qkv.{p}"]
                out[f"{dst}attn.proj.{p}"] = vit_sd[f"{src}attn.proj.{p}"]
    return out


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.setdefaulttimeout(timeout)
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False
    finally:
        socket.setdefaulttimeout(None)


def imagenet_state_dict(source: str | os.PathLike) -> dict[str, Tensor]:
    """ImageNet ViT weights from a local file (`.pth` / `.safetensors`) or a timm model name.

    A name downloads through timm where there is network. Offline (no DNS, or HF_HUB_OFFLINE=1) it
    uses timm's cache only and otherwise fails at once, saying how to pass a local file, instead of
    retrying for a minute.
    """
    path = Path(source)
    if path.suffix in (".pth", ".pt", ".bin", ".safetensors") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights file not found: {path}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return _unwrap(load_checkpoint_file(path), str(path))

    import timm

    name = str(source)
    try:
        if not _hub_reachable():
            import huggingface_hub.constants as hf_constants

            hf_constants.HF_HUB_OFFLINE = True  # cache only: fail in milliseconds, not after retries
        model = timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as e:
        raise RuntimeError(
            f"could not get pretrained weights '{name}' through timm ({type(e).__name__}). Without network, "
            f"download the file elsewhere (e.g. DeiT-S: deit_small_patch16_224-cd65a155.pth) and pass its "
            f"path instead: model.pretrained=/path/to/weights.pth (.pth or .safetensors)"
        ) from e
    return model.state_dict()


def load_imagenet_weights(net: ClusterCAMNet, source: str | os.PathLike) -> ClusterCAMNet:
    """Initialise the backbone from ImageNet DeiT/ViT weights the way the reference starts training."""
    mapped = imagenet_to_ours(imagenet_state_dict(source), net)
    missing, unexpected = net.load_state_dict(mapped, strict=False)
    assert not unexpected, unexpected
    return net
