"""ImageNet initialisation: DeiT / ViT / DINO / DINOv2 weights (timm's layout) mapped onto the backbone,
and a local file's weights into a stage-two smp network's encoder.

The reference starts from DeiT (DCVL-WSSS/ClusterCAM main.py, the `--finetune` branch); the other
families follow the same rule. Weights come from a local file or, by timm model name, from the hub.
Nothing here changes process-wide state: the hub is probed with a connection of its own timeout, and
timm's offline mode is set for the one download and restored.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from clustercam_pl.checkpoint.state_dict import read_weights
from clustercam_pl.models import ClusterCAMNet, NetConfig
from clustercam_pl.models.config import preset_names
from clustercam_pl.models.smp_net import SmpSegNet
from clustercam_pl.utils.files import names_weights_file, natural_key

log = logging.getLogger(__name__)

# Tensors of timm ViT state dicts (DeiT / ViT / DINO / DINOv2) that ClusterCAM deliberately leaves out:
# the final norm (the reference keeps it but never applies it to the patch tokens), the classifier
# heads and the pooled-feature norm (ClusterCAM has its own head), DeiT-distilled's distillation token,
# and the register tokens of the *_reg variants (ClusterCAM has no registers; see imagenet_to_ours).
UNUSED_IMAGENET_KEYS = (
    "norm.weight", "norm.bias", "fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias",
    "head_dist.weight", "head_dist.bias", "dist_token", "reg_token",
)


def _prefix_positions(vit_sd: Mapping[str, Tensor]) -> int:
    """How many leading entries of `pos_embed` belong to prefix tokens (class, distillation, registers).

    DeiT / ViT / DINO / DINOv2 embed a position for every prefix token; timm's `no_embed_class`
    models (the DINOv2 *_reg variants) embed positions for the patches only.
    """
    n = vit_sd["pos_embed"].shape[1]
    prefix = sum(vit_sd[k].shape[1] for k in ("cls_token", "dist_token", "reg_token") if k in vit_sd)
    if n > prefix and round((n - prefix) ** 0.5) ** 2 == n - prefix:
        return prefix
    if round(n**0.5) ** 2 == n:
        return 0
    raise ValueError(f"pos_embed of {n} positions is neither {prefix} prefix tokens + a square grid nor a square grid")


def matching_presets(vit_sd: Mapping[str, Tensor]) -> list[str]:
    """The `conf/net` presets whose width, depth, patch size and LayerScale fit these timm weights."""
    try:
        C = vit_sd["cls_token"].shape[-1]
        patch = vit_sd["patch_embed.proj.weight"].shape[-1]
        depth = 1 + max(int(m.group(1)) for k in vit_sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    except (KeyError, ValueError):
        return []
    has_ls = "blocks.0.ls1.gamma" in vit_sd
    fits = []
    for name in preset_names():
        v = NetConfig.preset(name)
        if (v.embed_dim, v.patch_size, v.depth, v.layer_scale is not None) == (C, patch, depth, has_ls):
            fits.append(name)
    return fits


def adapt_input_conv(weight: Tensor, in_chans: int) -> Tensor:
    """RGB patch-embedding filters (O, 3, p, p) for an input of `in_chans` channels (O, in_chans, p, p).

    The usual rule (as timm's `adapt_input_conv`, timm/models/_manipulate.py): one channel gets the sum
    of the RGB filters (a grey image then gives the response of the same grey RGB image); more channels
    repeat the RGB filters cyclically (band 4 = R's, 5 = G's, ...) scaled by 3 / in_chans, so the
    activations keep the scale the pretrained blocks expect (for a multiple of 3 bands that all carry
    the same signal, exactly the response of the RGB image).
    """
    if weight.dim() != 4 or weight.shape[1] != 3:
        raise ValueError(f"expected RGB conv filters (O, 3, p, p), got {tuple(weight.shape)}")
    if in_chans == 3:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)  # (O, 1, p, p)
    repeat = -(-in_chans // 3)
    return weight.repeat(1, repeat, 1, 1)[:, :in_chans] * (3 / in_chans)  # (O, in_chans, p, p)


def imagenet_to_ours(
    vit_sd: Mapping[str, Tensor], net: ClusterCAMNet, source: str = "pretrained weights"
) -> dict[str, Tensor]:
    """Map a DeiT / ViT / DINO / DINOv2 state dict (timm layout) onto ClusterCAMNet's backbone, as the
    reference maps DeiT.

    The single class token and its position are copied to all K (a model without a class position
    gives zeros: timm adds none to it); the patch position embedding is resized (bicubic) from the
    weights' own grid to the model's `pos_grid`; each block's `norm1` initialises all four attention
    norms and `attn.qkv` / `attn.proj` initialise both attention branches; with LayerScale, `ls1`
    initialises the MHSA's and the cluster branch's gamma. A network of `in_chans` != 3 gets the RGB
    patch filters adapted by `adapt_input_conv` (logged). `proj_st`, `mix_param`, the CAM head and the
    decoder keep their random init. Every tensor of `vit_sd` is either mapped or one of
    `UNUSED_IMAGENET_KEYS`; anything else, a tensor the network needs but `vit_sd` lacks, or a shape
    that does not fit is an error naming the tensors and the presets that would fit.
    """
    bb = net.backbone
    K, C = bb.cfg.num_classes, bb.cfg.embed_dim
    used: set[str] = set()
    missing: list[str] = []

    def take(key: str) -> Tensor | None:
        if key not in vit_sd:
            missing.append(key)
            return None
        used.add(key)
        return vit_sd[key]

    def fit_hint() -> str:
        cfg = net.cfg
        fits = matching_presets(vit_sd)
        return (f"net has embed_dim={cfg.embed_dim}, depth={cfg.depth}, patch_size={cfg.patch_size}, "
                f"layer_scale={cfg.layer_scale}; "
                + (f"these weights fit net={' or net='.join(fits)}" if fits else
                   "no preset of conf/net fits these weights: set the net.* fields to their shapes"))

    out: dict[str, Tensor] = {}
    cls, pos = take("cls_token"), take("pos_embed")  # (1, 1, C), (1, prefix + g0*g0, C)
    if cls is None or pos is None:
        raise ValueError(f"{source}: not a ViT state dict in timm's layout: no {missing}")
    if cls.shape[-1] != C:
        raise ValueError(f"{source}: pretrained width {cls.shape[-1]} != model embed_dim {C}; {fit_hint()}")
    out["backbone.cls_token"] = cls[:, :1].expand(1, K, C).clone()
    prefix = _prefix_positions(vit_sd)
    g0 = round((pos.shape[1] - prefix) ** 0.5)
    g = round((bb.pos_embed.shape[1] - K) ** 0.5)
    patch_pos = pos[:, prefix:].reshape(1, g0, g0, C).permute(0, 3, 1, 2)  # (1, C, g0, g0)
    if g0 != g:
        patch_pos = F.interpolate(patch_pos, size=(g, g), mode="bicubic", align_corners=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, g * g, C)  # (1, g*g, C)
    cls_pos = pos[:, :1] if prefix else pos.new_zeros(1, 1, C)  # (1, 1, C)
    out["backbone.pos_embed"] = torch.cat([cls_pos.expand(1, K, C), patch_pos], dim=1)  # (1, K + g*g, C)
    for k in ("patch_embed.proj.weight", "patch_embed.proj.bias"):
        out["backbone." + k] = take(k)
    rgb = out["backbone.patch_embed.proj.weight"]  # (C, 3, p, p) or None when missing
    n = net.cfg.in_chans
    if rgb is not None and n != 3 and rgb.dim() == 4 and rgb.shape[1] == 3:
        out["backbone.patch_embed.proj.weight"] = adapt_input_conv(rgb, n)
        how = "summed" if n == 1 else f"repeated cyclically over the {n} bands and scaled by 3/{n}"
        log.info("%s: the RGB patch-embedding filters are %s (net.in_chans=%d)", source, how, n)
    qkv_parts = ("weight", "bias") if net.cfg.qkv_bias else ("weight",)
    for i, blk in enumerate(bb.blocks):
        src, dst = f"blocks.{i}.", f"backbone.blocks.{i}."
        for part in ("norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"):
            out[dst + part] = take(src + part)
        if net.cfg.layer_scale is not None:
            out[dst + "ls1.gamma"] = take(src + "ls1.gamma")
            out[dst + "ls2.gamma"] = take(src + "ls2.gamma")
        norm1 = {p: take(f"{src}norm1.{p}") for p in ("weight", "bias")}
        qkv = {p: take(f"{src}attn.qkv.{p}") for p in qkv_parts}
        proj = {p: take(f"{src}attn.proj.{p}") for p in ("weight", "bias")}
        if blk.cluster:
            a = dst + "st_attn."
            for p in ("weight", "bias"):
                for ln in ("ln_pat", "ln_pat2", "ln_cls", "ln_st"):
                    out[f"{a}{ln}.{p}"] = norm1[p]
                out[f"{a}proj.{p}"] = out[f"{a}proj_cls.{p}"] = proj[p]
            for p in qkv_parts:
                out[f"{a}qkv.{p}"] = out[f"{a}qkv_stsa.{p}"] = qkv[p]
            if net.cfg.layer_scale is not None:
                out[dst + "ls_cluster.gamma"] = out[dst + "ls1.gamma"]
        else:
            for p in ("weight", "bias"):
                out[f"{dst}attn.norm1.{p}"] = norm1[p]
                out[f"{dst}attn.proj.{p}"] = proj[p]
            for p in qkv_parts:
                out[f"{dst}attn.qkv.{p}"] = qkv[p]
    left = sorted(set(vit_sd) - used - set(UNUSED_IMAGENET_KEYS), key=natural_key)
    if missing or left:
        lines = [f"{source} does not fit the network ({fit_hint()}):"]
        if missing:
            lines.append(f"  missing in the weights: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        if left:
            lines.append(f"  neither mapped nor deliberately unused ({list(UNUSED_IMAGENET_KEYS)}): "
                         f"{left[:10]}{' ...' if len(left) > 10 else ''}")
        raise ValueError("\n".join(lines))
    own = net.state_dict()
    if bad := [f"{k}: weights {tuple(v.shape)} vs model {tuple(own[k].shape)}"
               for k, v in out.items() if own[k].shape != v.shape]:
        raise ValueError(f"{source} does not fit the network ({fit_hint()}):\n  shape mismatch "
                         + "\n  shape mismatch ".join(bad[:10]))
    if "reg_token" in vit_sd:
        log.warning("%s: its %d register tokens are dropped (ClusterCAM has none); the blocks were trained "
                    "with them", source, vit_sd["reg_token"].shape[1])
    return out


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether the hub answers on 443 within `timeout` s (False with HF_HUB_OFFLINE set); no global timeout."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """huggingface_hub's offline mode for the block only: the cache is used and a miss fails at once."""
    if not offline:
        yield
        return
    import huggingface_hub.constants as hf_constants

    before = hf_constants.HF_HUB_OFFLINE
    hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = before


def imagenet_state_dict(source: str | os.PathLike) -> dict[str, Tensor]:
    """ImageNet ViT weights from a local file (`.pth` / `.safetensors`) or a timm model name.

    A name downloads through timm where there is network. Offline (the hub does not answer, or
    HF_HUB_OFFLINE=1) it uses timm's cache only and otherwise fails at once, saying how to pass a
    local file, instead of retrying for a minute.
    """
    if names_weights_file(source):
        return read_weights(source)

    import timm

    name = str(source)
    try:
        with _hub_offline(not _hub_reachable()):
            model = timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as e:
        raise RuntimeError(
            f"could not get pretrained weights '{name}' through timm ({type(e).__name__}). Without network, "
            f"download the file elsewhere (e.g. DeiT-S: deit_small_patch16_224-cd65a155.pth) and pass its "
            f"path instead: model.pretrained=/path/to/weights.pth (.pth or .safetensors)"
        ) from e
    return model.state_dict()


def load_imagenet_weights(net: ClusterCAMNet, source: str | os.PathLike) -> ClusterCAMNet:
    """Initialise the backbone from DeiT / ViT / DINO / DINOv2 weights the way the reference starts from DeiT."""
    mapped = imagenet_to_ours(imagenet_state_dict(source), net, str(source))
    _, unexpected = net.load_state_dict(mapped, strict=False)
    if unexpected:  # imagenet_to_ours maps only onto the network's own tensors
        raise ValueError(f"{source}: mapped tensors the network does not have: {unexpected[:10]}")
    return net


# Classification heads of ImageNet checkpoints (torchvision / timm / smp's own encoders) that a
# segmentation encoder does not have; dropped silently from an encoder weights file.
CLASSIFIER_PREFIXES = ("fc.", "head.", "head_dist.", "fc_norm.", "classifier.", "last_linear.", "_fc.")


def fit_encoder_keys(sd: Mapping[str, Tensor], own: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """`sd` in the key layout of an smp encoder's state dict `own`, whichever of these the file holds: the
    encoder's own state dict, a whole smp model's (``encoder.``) or an `SmpSegNet`'s (``model.encoder.``),
    or a timm / torchvision classifier's (a ``tu-`` encoder keeps the timm model under ``model.``).
    The layout sharing most keys with `own` wins; a classifier head is dropped."""
    candidates = [dict(sd), {"model." + k: v for k, v in sd.items()}]
    for prefix in ("model.encoder.", "encoder."):
        if any(k.startswith(prefix) for k in sd):
            candidates.append({k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)})
    best = max(candidates, key=lambda c: len(own.keys() & c.keys()))
    return {k: v for k, v in best.items()
            if k in own or not k.removeprefix("model.").startswith(CLASSIFIER_PREFIXES)}


def load_smp_encoder_weights(net: SmpSegNet, source: str | os.PathLike) -> SmpSegNet:
    """Initialise a stage-two smp network's encoder (only) from a local weights file (`read_weights`).

    Refused, naming the file, when its tensors do not cover the encoder exactly: how many are missing,
    unexpected or of another shape, with a few of each, and how to write a file that fits.
    """
    encoder = net.model.encoder
    own = encoder.state_dict()
    sd = fit_encoder_keys(read_weights(source), own)
    # A file saved without BatchNorm's step counters (older torchvision) keeps the encoder's own.
    sd |= {k: v for k, v in own.items() if k.endswith("num_batches_tracked") and k not in sd}
    missing = sorted(own.keys() - sd.keys(), key=natural_key)
    unexpected = sorted(sd.keys() - own.keys(), key=natural_key)
    shapes = [f"{k}: file {tuple(v.shape)} vs encoder {tuple(own[k].shape)}"
              for k, v in sd.items() if k in own and v.shape != own[k].shape]
    if missing or unexpected or shapes:
        name, arch = net.cfg.encoder_name, net.cfg.arch
        problems = [f"{len(found)} {what} (e.g. {found[:4]})" for what, found in (
            ("missing from the file", missing), ("in the file but not in the encoder", unexpected),
            ("of another shape", shapes)) if found]
        raise ValueError(
            f"encoder weights {source} do not fit the {name} encoder ({len(own)} tensors): "
            f"{'; '.join(problems)}. Pass weights of this encoder architecture: its state dict, a whole smp "
            f"model's, or a timm / torchvision classifier's of the same model; e.g. where there is network: "
            f"python -c \"import torch, segmentation_models_pytorch as smp; torch.save(smp.create_model("
            f"'{arch}', encoder_name='{name}', encoder_weights='imagenet').encoder.state_dict(), 'encoder.pth')\"")
    encoder.load_state_dict(sd)
    return net
