"""Reference checkpoints: the official ClusterCAM's `{"model": state_dict}` files.

The reference is DCVL-WSSS/ClusterCAM (models.py `MCTformerV2`); its files carry DataParallel's
`module.` prefixes and no config, so the architecture is read off the tensor shapes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from clustercam_pl.checkpoint.state_dict import load_state_dict_checked, unwrap_state_dict
from clustercam_pl.models import ClusterCAMNet, NetConfig

_BACKBONE_KEYS = ("cls_token", "pos_embed", "patch_embed.", "blocks.")
# The reference keeps DeiT's final LayerNorm but never applies it; we do not build it.
_UNUSED_REFERENCE_KEYS = ("norm.weight", "norm.bias")


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


def reference_net(state_dict: Mapping[str, Any], source: str = "state dict", **overrides: Any) -> ClusterCAMNet:
    """A ClusterCAMNet with the weights of a reference state dict already in memory.

    For files use `load_checkpoint`. The `{"model": ...}` wrapper and the `module.` prefix may be
    absent. Embed dim, depth, heads, K, patch size and which blocks cluster are inferred from the
    tensors; `overrides` set the `NetConfig` fields shapes cannot tell (cluster_grid, cluster_iters,
    decoder_dilation, fused_attention, ...).
    """
    sd = unwrap_state_dict(state_dict, source)
    net = ClusterCAMNet(NetConfig.from_dict(infer_config(sd) | overrides, source))
    load_state_dict_checked(net, reference_to_ours(sd), source)
    return net
