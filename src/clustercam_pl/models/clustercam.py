"""ClusterCAMNet: backbone, CAM head and segmentation decoder, typed outputs.

Reference: DCVL-WSSS/ClusterCAM models.py (`MCTformerV2.forward`; its `cam_only` branch is
`cam_inputs` here plus `clustercam_pl.cam.generate.single_scale_cam`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clustercam_pl.models.attention import AttentionRecord, Keep
from clustercam_pl.models.config import NetConfig, as_config
from clustercam_pl.models.heads import LargeFOV
from clustercam_pl.models.vit import BackboneOutput, ClusterViT


@dataclass
class ClusterCAMOutput:
    """Everything one forward pass gives; fields not asked for are None."""

    cls_logits: Tensor  # (B, K) class tokens averaged over channels
    patch_logits: Tensor  # (B, K) global average pool of the CAM head (with bias)
    seg_logits: Tensor | None  # (B, C, h, w) decoder output at patch resolution, C = cfg.num_labels
    features: Tensor  # (B, C + L * nh * K, h, w) the concatenated feature map F'
    c2p: Tensor  # (B, L, nh, K, N) every block's mixed class-to-patch attention
    attention: list[AttentionRecord] | None  # per block, from `forward_intermediates`


@dataclass
class CAMInputs:
    """What a ClusterCAM is made of (the CAM itself is made in `clustercam_pl.cam.generate`)."""

    class_maps: Tensor  # (B, K, h, w) the CAM head's convolution of F' without its bias
    c2p: Tensor  # (B, L, nh, K, N) every block's mixed class-to-patch attention
    qk: list[tuple[Tensor, Tensor]] | None  # fused path: per block (B, nh, T, d) queries and keys
    p2p: list[Tensor] | None  # materialising path: per block (B, N, N) head-mean patch-to-patch attention


class ClusterCAMNet(nn.Module):
    """The ClusterCAM network: ClusterViT + 3x3 CAM head + LargeFOV decoder, shaped by a `NetConfig`.

    `ClusterCAMNet(NetConfig.preset("vits", num_classes=20))`, or with fields directly:
    `ClusterCAMNet(num_classes=20, depth=6)` (the defaults are the reference DeiT-S). Its shapes are
    read from `net.cfg` (`cfg.num_classes`, `cfg.feature_channels`, ...; `cfg.to_dict()` as plain
    types), the smallest input from `net.backbone.min_input_side`. Entries:
    `forward` (training and prediction), `cam_inputs` (what a CAM needs) and `forward_intermediates`
    (every attention map, for analysis).
    """

    def __init__(self, config: NetConfig | None = None, **fields: Any):
        super().__init__()
        cfg = self.cfg = as_config(config, fields)
        self.backbone = ClusterViT(cfg)
        self.head = nn.Conv2d(cfg.feature_channels, cfg.num_classes, kernel_size=3, padding=1)
        self.decoder = LargeFOV(cfg.feature_channels, cfg.num_labels, cfg.decoder_width, cfg.decoder_dilation)
        self.compiled = False  # set by `compile_parts`

    def alphas(self) -> Tensor:
        """Every cluster block's alpha, (L_c,) (the reference's `st_attn.mix_param`)."""
        return self.backbone.alphas()

    def compile_parts(self, **compile_kwargs: Any) -> None:
        """`torch.compile` the backbone, CAM head and decoder in place (state-dict keys unchanged).

        Compiling the whole module would leave the CAM passes (three of the four passes of a training
        step) eager. Each input size compiles its own graph (CAM scales, training crop, eval sizes).
        """
        for module in (self.backbone, self.head, self.decoder):
            module.compile(**compile_kwargs)
        self.compiled = True

    def _features(self, bb: BackboneOutput) -> Tensor:
        B, L, nh, K, N = bb.c2p.shape
        h, w = bb.patch_tokens.shape[-2:]
        attn = bb.c2p.reshape(B, L * nh * K, h, w)  # channel l * nh * K + head * K + k
        return torch.cat([bb.patch_tokens, attn], dim=1)  # (B, C', h, w)

    def _output(self, bb: BackboneOutput, with_seg: bool, records: list[AttentionRecord] | None) -> ClusterCAMOutput:
        feats = self._features(bb)
        return ClusterCAMOutput(
            cls_logits=bb.class_tokens.mean(-1),  # (B, K)
            patch_logits=self.head(feats).mean(dim=(2, 3)),  # (B, K)
            seg_logits=self.decoder(feats) if with_seg else None,
            features=feats,
            c2p=bb.c2p,
            attention=records,
        )

    def forward(self, x: Tensor, with_seg: bool = True) -> ClusterCAMOutput:
        """x (B, 3, H, W) ImageNet-normalised. `with_seg=False` skips the decoder (seg warm-up)."""
        return self._output(self.backbone(x), with_seg, None)

    def forward_intermediates(self, x: Tensor, with_seg: bool = True) -> ClusterCAMOutput:
        """The forward with every block's `AttentionRecord` in `.attention` (materialises all maps)."""
        bb = self.backbone(x, Keep.RECORD)
        return self._output(bb, with_seg, [a.record for a in bb.blocks])

    def cam_inputs(self, x: Tensor, propagation: bool = True) -> CAMInputs:
        """The CAM head's maps and the attention a ClusterCAM is made of; no decoder, no gradient needed.

        With `propagation`, also what patch-to-patch propagation needs: the queries and keys on the
        fused path (the (N, N) matrices are never formed), the head-mean matrices otherwise.
        """
        keep = Keep.NOTHING if not propagation else Keep.QK if self.cfg.fused_attention else Keep.P2P
        bb = self.backbone(x, keep)
        feats = self._features(bb)
        return CAMInputs(
            class_maps=F.conv2d(feats, self.head.weight, padding=1),  # (B, K, h, w)
            c2p=bb.c2p,
            qk=[a.qk for a in bb.blocks] if keep is Keep.QK else None,
            p2p=[a.p2p for a in bb.blocks] if keep is Keep.P2P else None,
        )
