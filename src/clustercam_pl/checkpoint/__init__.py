"""Every checkpoint kind in one place: how files are found, read, migrated, written and turned into networks.

Kinds:
* framework: a Lightning checkpoint of this package, with a `clustercam` section (format versions
  below); rebuilds its network from the stored `NetConfig` and carries its CAM settings and the
  dataset's class names.
* reference: the official ClusterCAM (`{"model": state_dict}`, `module.` prefixes from DataParallel);
  the architecture is read off the tensor shapes (DCVL-WSSS/ClusterCAM models.py `MCTformerV2`).
* ImageNet ViT: DeiT / ViT / DINO / DINOv2 weights in timm's layout, the backbone's initialisation
  (DCVL-WSSS/ClusterCAM main.py, the `--finetune` branch, for DeiT; the same rule for the others).

Framework format history:
* 1: `clustercam.net_config` holds the network's constructor arguments, including the CAM settings
  `cam_layers` and `p2p_refine`.
* 2: `net_config` is a `NetConfig` dict; `cam_layers` / `p2p_refine` live in the CAM settings
  (`hyper_parameters.cam`); `clustercam.class_names` names the classes. Format 1 is migrated on read.

Every file is read with `torch.load(..., weights_only=True)`: a checkpoint someone sent cannot run code.
"""

from __future__ import annotations

import glob
import logging
import os
import pickle
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import Tensor

from clustercam_pl.data.labels import COCO_CLASSES, VOC_CLASSES
from clustercam_pl.models import ClusterCAMNet, NetConfig
from clustercam_pl.models.config import CAM_KEYS_OF_FORMAT_1, preset_names
from clustercam_pl.utils.files import atomic_write

log = logging.getLogger(__name__)

FORMAT = 2
"""The framework checkpoint format this version writes; newer files are refused, older ones migrated."""
SUFFIXES = (".ckpt", ".pth", ".pt")


# ------------------------------------------------------------------------------------ files
def natural_key(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def find_checkpoints(spec: str | os.PathLike | Sequence[str | os.PathLike], key: str = "ckpt_path") -> list[Path]:
    """Checkpoint files from a path, a list of paths, a glob pattern or a folder (in name order).

    A folder gives its `*.ckpt/*.pth/*.pt` files, or those of its `checkpoints/` subfolder (a run
    folder). `key` is the config key the errors name.
    """
    if spec is None or (isinstance(spec, str) and spec in ("", "???")):
        raise ValueError(f"{key} is not set: pass {key}=<file|[a,b]|glob|folder>")
    items = [spec] if isinstance(spec, str | os.PathLike) else list(spec)
    if not items:
        raise ValueError(f"{key} is an empty list")
    found: list[Path] = []
    for item in items:
        text = os.fspath(item)
        p = Path(text)
        if p.is_dir():
            files = sorted((f for f in p.iterdir() if f.suffix in SUFFIXES and f.is_file()),
                           key=lambda f: natural_key(f.name))
            if not files and (p / "checkpoints").is_dir():
                files = find_checkpoints(p / "checkpoints", key)
            if not files:
                raise FileNotFoundError(f"{key}={text}: folder has no {'/'.join(SUFFIXES)} files")
            found += files
        elif glob.has_magic(text):
            files = sorted((Path(f) for f in glob.glob(text) if Path(f).is_file()), key=lambda f: natural_key(str(f)))
            if not files:
                raise FileNotFoundError(f"{key}={text}: the pattern matches no file")
            found += files
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"{key}={text} does not exist")
    unique: dict[str, Path] = {}
    for f in found:
        unique.setdefault(str(f.resolve()), f)
    return list(unique.values())


def find_one_checkpoint(spec: str | os.PathLike | Sequence[str | os.PathLike], key: str = "ckpt_path") -> Path:
    """The one checkpoint a command that uses a single network reads, in the forms `find_checkpoints` takes.

    Several matches (a run folder) give its `last.ckpt` if there is one; otherwise the choice is refused
    with the candidates named. The pick is logged.
    """
    files = find_checkpoints(spec, key)
    if len(files) == 1:
        pick = files[0]
    else:
        last = [f for f in files if f.name == "last.ckpt"]
        if len(last) != 1:
            names = ", ".join(str(f) for f in files[:6]) + (" ..." if len(files) > 6 else "")
            raise ValueError(f"{key}={spec} gives {len(files)} checkpoints ({names}): pass one file")
        pick = last[0]
    if str(pick) != os.fspath(spec):
        log.info("%s=%s: using %s", key, spec, pick)
    return pick


def read_file(path: str | os.PathLike) -> Any:
    """`torch.load(weights_only=True)` with errors that name the file and say what to do."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        called = re.search(r"GLOBAL ([\w.]+) was not an allowed global", str(e))
        what = f" (it would call {called.group(1)})" if called else ""
        out = path.with_name(path.stem + ".tensors.pth")
        raise ValueError(
            f"refusing to read {path}: it holds Python code that would run on load{what}, and checkpoints are "
            "read with weights_only=True. Only if you trust the file, convert it once to plain tensors and "
            f"pass the copy: python -c \"import torch; torch.save(torch.load('{path}', weights_only=False), "
            f"'{out}')\""
        ) from e
    except Exception as e:  # truncated zip, foreign format
        raise ValueError(
            f"cannot read checkpoint {path} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "It may be truncated (an interrupted copy or save) or not a PyTorch weights file."
        ) from e


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` through `atomic_write`: the target is never half-written (a later training start
    removes the partial file of a process killed mid-save)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        torch.save(obj, f)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with atomic saves (`save_atomic`) and `weights_only` loads (`read_file`).

    A kill during a save leaves the previous checkpoint intact (rename is atomic on POSIX).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any = None) -> None:
        save_atomic(checkpoint, path)

    def load_checkpoint(self, path: _PATH, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return read_file(path)


# -------------------------------------------------------------------------------- framework
def check_format(checkpoint: Mapping[str, Any], source: str) -> int:
    fmt = checkpoint.get("clustercam", {}).get("format")
    if fmt is None:
        raise ValueError(f"{source} is not a clustercam_pl checkpoint (no 'clustercam' section)")
    if fmt > FORMAT:
        raise ValueError(
            f"{source} has checkpoint format {fmt}, newer than this clustercam_pl reads ({FORMAT}): "
            "upgrade clustercam_pl"
        )
    return int(fmt)


def migrate(checkpoint: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The checkpoint in the current format: a new dict (tensors shared), the input is not changed."""
    out = dict(checkpoint)
    if check_format(checkpoint, source) == 1:
        net = dict(checkpoint["clustercam"]["net_config"])
        hp = dict(checkpoint.get("hyper_parameters") or {})
        cam = dict(hp.get("cam") or {})
        for key in CAM_KEYS_OF_FORMAT_1:
            if key in net:
                cam.setdefault(key, net.pop(key))
        hp["cam"] = cam
        if isinstance(hp.get("net"), Mapping):
            hp["net"] = {k: v for k, v in hp["net"].items() if k not in CAM_KEYS_OF_FORMAT_1}
        out["hyper_parameters"] = hp
        out["clustercam"] = {"format": FORMAT, "net_config": net, "class_names": None}
    return out


def framework_section(net: ClusterCAMNet, class_names: Sequence[str] | None) -> dict[str, Any]:
    """What a framework checkpoint carries besides Lightning's own keys."""
    return {"format": FORMAT, "net_config": net.cfg.to_dict(),
            "class_names": None if class_names is None else [str(n) for n in class_names]}


def net_from_framework(checkpoint: Mapping[str, Any], source: str) -> ClusterCAMNet:
    """Rebuild the network of a framework checkpoint (any supported format; no Hydra config needed)."""
    checkpoint = migrate(checkpoint, source)
    net = ClusterCAMNet(NetConfig.from_dict(checkpoint["clustercam"]["net_config"], source))
    sd = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    load_state_dict_checked(net, sd, source)
    return net


# -------------------------------------------------------------------------------- reference
_BACKBONE_KEYS = ("cls_token", "pos_embed", "patch_embed.", "blocks.")
# The reference keeps DeiT's final LayerNorm but never applies it; we do not build it.
_UNUSED_REFERENCE_KEYS = ("norm.weight", "norm.bias")


def unwrap_state_dict(obj: Any, source: str) -> dict[str, Tensor]:
    """The tensors of `obj` or of `obj["model"]`, without DataParallel's `module.` prefix."""
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
    """The `NetConfig` fields a reference-format state dict shows in its tensor shapes.

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
        layer_scale=1e-5 if "blocks.0.ls1.gamma" in sd else None,  # the value is loaded, only presence matters
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
        cfg = net.cfg
        lines = [f"{source} does not fit the model (num_classes={cfg.num_classes}, "
                 f"embed_dim={cfg.embed_dim}, depth={cfg.depth}):"]
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
    which blocks cluster are inferred from the tensors; `overrides` set the `NetConfig` fields shapes
    cannot tell (cluster_grid, cluster_iters, decoder_dilation, fused_attention, ...).
    """
    if isinstance(path_or_state_dict, Mapping):
        source, obj = "state dict", path_or_state_dict
    else:
        source, obj = str(path_or_state_dict), read_file(path_or_state_dict)
    sd = unwrap_state_dict(obj, source)
    net = ClusterCAMNet(NetConfig.from_dict(infer_config(sd) | overrides, source))
    load_state_dict_checked(net, reference_to_ours(sd), source)
    return net


# ---------------------------------------------------------------------------------- any kind
@dataclass
class LoadedCheckpoint:
    """A network and what its file says: kind, training progress, CAM settings, class names."""

    net: ClusterCAMNet
    path: str
    kind: str  # "framework" (Lightning, this package) or "reference" (official ClusterCAM)
    epoch: int | None
    global_step: int | None
    cam: dict[str, Any] = field(default_factory=dict)  # CAMConfig fields the run trained with ({} for reference)
    class_names: list[str] | None = None  # K names; None when the file does not say


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, Tensor) and value.numel() == 1:
        return int(value.item())
    return None


def resolve_class_names(num_classes: int, stored: Sequence[str] | None = None) -> list[str]:
    """The K class names of a network: the ones its checkpoint stores, else by K the VOC names (20), the
    COCO names (80), otherwise ``class_1 .. class_K``.

    Reference checkpoints (and framework files written before format 2) store none; stored names of the
    wrong length are ignored with a warning.
    """
    if stored is not None:
        if len(stored) == num_classes:
            return [str(n) for n in stored]
        log.warning("the checkpoint names %d classes for a network of %d; naming them by K instead",
                    len(stored), num_classes)
    if num_classes == len(VOC_CLASSES):
        return list(VOC_CLASSES)
    if num_classes == len(COCO_CLASSES):
        return list(COCO_CLASSES)
    return [f"class_{i}" for i in range(1, num_classes + 1)]


def load_checkpoint(path: str | os.PathLike, **reference_overrides: Any) -> LoadedCheckpoint:
    """Read a checkpoint once and rebuild its network (on the CPU, eval mode).

    A file with a `clustercam` section is a framework checkpoint; anything else is treated as a
    reference checkpoint, whose `reference_overrides` set the `NetConfig` fields tensor shapes cannot
    tell. They are refused for framework checkpoints, which carry their own config.
    """
    source = str(path)
    obj = read_file(path)  # FileNotFoundError / ValueError naming the file
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source}: expected a checkpoint dict, got {type(obj).__name__}")
    if "clustercam" in obj:
        if reference_overrides:
            raise ValueError(
                f"{source} is a framework checkpoint (it stores its own network config); "
                f"net_overrides={reference_overrides} only apply to reference checkpoints"
            )
        ckpt = migrate(obj, source)
        net = net_from_framework(ckpt, source)
        epoch, step = _int_or_none(ckpt.get("epoch")), _int_or_none(ckpt.get("global_step"))
        cam = dict(ckpt.get("hyper_parameters", {}).get("cam") or {})
        names = ckpt["clustercam"].get("class_names")
        return LoadedCheckpoint(net.eval(), source, "framework", epoch, step, cam, names)
    if moved := [k for k in reference_overrides if k in CAM_KEYS_OF_FORMAT_1]:
        raise ValueError(f"net_overrides {moved} are CAM settings now: pass cam.{moved[0]}=... instead")
    try:
        net = from_official_checkpoint(obj, **reference_overrides)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(
            f"{source} is neither a clustercam_pl checkpoint (no 'clustercam' section) nor a loadable "
            f"reference checkpoint: {e}. For reference checkpoints, settings that tensor shapes cannot "
            "tell are passed as net_overrides (e.g. +net_overrides.cluster_grid=[3,3])."
        ) from e
    epoch = _int_or_none(obj.get("epoch"))
    if epoch is None:  # the reference saves checkpoint_{epoch}.pth
        m = re.search(r"checkpoint_(\d+)\.pth$", Path(source).name)
        epoch = int(m.group(1)) if m else None
    return LoadedCheckpoint(net.eval(), source, "reference", epoch, None)


# ---------------------------------------------------------------------------- ImageNet init
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


def imagenet_to_ours(
    vit_sd: Mapping[str, Tensor], net: ClusterCAMNet, source: str = "pretrained weights"
) -> dict[str, Tensor]:
    """Map a DeiT / ViT / DINO / DINOv2 state dict (timm layout) onto ClusterCAMNet's backbone, as the
    reference maps DeiT.

    The single class token and its position are copied to all K (a model without a class position
    gives zeros: timm adds none to it); the patch position embedding is resized (bicubic) from the
    weights' own grid to the model's `pos_grid`; each block's `norm1` initialises all four attention
    norms and `attn.qkv` / `attn.proj` initialise both attention branches; with LayerScale, `ls1`
    initialises the MHSA's and the cluster branch's gamma. `proj_st`, `mix_param`, the CAM head and the
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
        return unwrap_state_dict(read_file(path), str(path))

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
    """Initialise the backbone from DeiT / ViT / DINO / DINOv2 weights the way the reference starts from DeiT."""
    mapped = imagenet_to_ours(imagenet_state_dict(source), net, str(source))
    missing, unexpected = net.load_state_dict(mapped, strict=False)
    assert not unexpected, unexpected
    return net
