"""ClusterCAMNet: backbone, CAM head and segmentation decoder, one typed output.

Reference: DCVL-WSSS/ClusterCAM models.py (`MCTformerV2.forward`, its `cam_only` branch is `cam()`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clustercam_pl.models.attention import AttentionRecord
from clustercam_pl.models.heads import LargeFOV
from clustercam_pl.models.vit import BackboneOutput, ClusterViT


@dataclass
class ClusterCAMOutput:
    """Everything one forward pass gives; fields not asked for are None."""

    cls_logits: Tensor  # (B, K) class tokens averaged over channels
    patch_logits: Tensor  # (B, K) global average pool of the CAM head (with bias)
    seg_logits: Tensor | None  # (B, K + 1, h, w) decoder output at patch resolution
    features: Tensor  # (B, C + L * nh * K, h, w) the concatenated feature map F'
    c2p: Tensor  # (B, L, nh, K, N) every block's mixed class-to-patch attention
    attention: list[AttentionRecord] | None  # per block, when `record=True`


class ClusterCAMNet(nn.Module):
    """The ClusterCAM network: ClusterViT + 3x3 CAM head + LargeFOV decoder.

    Every size is a constructor argument with the reference value as default; the feature width is
    derived (`embed_dim + depth * num_heads * num_classes`), never written as a literal.

    Args:
        num_classes: K foreground classes (the decoder predicts K + 1 with background).
        cam_layers: how many last blocks' class-to-patch attention weight the CAM (reference 3).
        p2p_refine: propagate CAMs with the patch-to-patch attention summed over all blocks.
        fused_attention: compute attention outputs with fused SDPA and only the K class rows
            explicitly (fast); False materialises every attention matrix as the reference does.
        decoder_width, decoder_dilation: LargeFOV shape (512, 5).
        **backbone: forwarded to `ClusterViT` (embed_dim, depth, num_heads, cluster_grid, ...).
    """

    def __init__(
        self,
        num_classes: int = 20,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        patch_size: int = 16,
        pos_grid: int = 14,
        cluster_blocks: Sequence[int] | None = None,
        cluster_grid: Sequence[int] = (2, 2),
        cluster_iters: int = 3,
        alpha_init: float | None = None,
        drop_path_rate: float = 0.1,
        cam_layers: int = 3,
        p2p_refine: bool = True,
        fused_attention: bool = True,
        decoder_width: int = 512,
        decoder_dilation: int = 5,
    ):
        super().__init__()
        # Constructor arguments, stored in framework checkpoints so a network rebuilds without configs.
        self.config = {k: (list(v) if isinstance(v, Sequence) and not isinstance(v, str) else v)
                       for k, v in locals().items() if k not in ("self", "__class__")}
        if not 1 <= cam_layers <= depth:
            raise ValueError(f"cam_layers must be in 1..depth={depth}, got {cam_layers}")
        self.backbone = ClusterViT(
            num_classes, embed_dim, depth, num_heads, mlp_ratio, patch_size, pos_grid,
            cluster_blocks, cluster_grid, cluster_iters, alpha_init, drop_path_rate,
        )
        self.num_classes = num_classes
        self.cam_layers, self.p2p_refine, self.fused_attention = cam_layers, p2p_refine, fused_attention
        feat = embed_dim + depth * num_heads * num_classes
        self.head = nn.Conv2d(feat, num_classes, kernel_size=3, padding=1)
        self.decoder = LargeFOV(feat, num_classes + 1, decoder_width, decoder_dilation)
        self.compiled = False  # set by `compile_parts`

    @property
    def feature_channels(self) -> int:
        return self.head.in_channels

    def compile_parts(self, **compile_kwargs: Any) -> None:
        """`torch.compile` the backbone, CAM head and decoder in place (state-dict keys unchanged).

        Compiling the whole module would leave `cam()`, three of the four passes of a training step,
        eager. Each input size compiles its own graph (CAM scales, training crop, eval sizes).
        """
        for module in (self.backbone, self.head, self.decoder):
            module.compile(**compile_kwargs)
        self.compiled = True

    def _features(self, bb: BackboneOutput) -> Tensor:
        B, L, nh, K, N = bb.c2p.shape
        h, w = bb.patch_tokens.shape[-2:]
        attn = bb.c2p.reshape(B, L * nh * K, h, w)  # channel l * nh * K + head * K + k
        return torch.cat([bb.patch_tokens, attn], dim=1)  # (B, C', h, w)

    def forward(self, x: Tensor, with_seg: bool = True, record: bool = False) -> ClusterCAMOutput:
        """x (B, 3, H, W) ImageNet-normalised. `with_seg=False` skips the decoder (seg warm-up)."""
        bb = self.backbone(x, materialize=not self.fused_attention, record=record)
        feats = self._features(bb)
        return ClusterCAMOutput(
            cls_logits=bb.class_tokens.mean(-1),  # (B, K)
            patch_logits=self.head(feats).mean(dim=(2, 3)),  # (B, K)
            seg_logits=self.decoder(feats) if with_seg else None,
            features=feats,
            c2p=bb.c2p,
            attention=bb.records,
        )

    @torch.no_grad()
    def cam(self, x: Tensor, p2p_refine: bool | None = None, cam_layers: int | None = None) -> Tensor:
        """Single-scale ClusterCAM (B, K, h, w), exactly the reference's `cam_only` path.

        `ReLU(head conv without bias) * sum of the last `cam_layers` blocks' head-mean class-to-patch
        attention`, then (if `p2p_refine`) multiplied by the head-mean patch-to-patch attention summed
        over all blocks. No gradient: CAMs are targets, never differentiated.
        """
        p2p_refine = self.p2p_refine if p2p_refine is None else p2p_refine
        n = self.cam_layers if cam_layers is None else cam_layers
        fused = self.fused_attention
        bb = self.backbone(x, materialize=not fused, keep_qk=p2p_refine and fused, record=p2p_refine and not fused)
        feats = self._features(bb)
        B, K, (h, w) = x.shape[0], self.num_classes, feats.shape[-2:]
        cam = F.relu(F.conv2d(feats, self.head.weight, padding=1))  # (B, K, h, w)
        weight = bb.c2p[:, -n:].mean(dim=2).sum(dim=1)  # (B, K, N)
        cam = cam * weight.reshape(B, K, h, w)
        if not p2p_refine:
            return cam
        if fused:
            propagated = propagate_with_attention(cam.flatten(2), bb.qk, K)
        else:
            p2p = sum(r.p2p.mean(dim=1) for r in bb.records)  # (B, N, N)
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
