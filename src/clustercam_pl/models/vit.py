"""The multi-class-token ViT backbone of ClusterCAM (DeiT layout, K class tokens).

Reference: DCVL-WSSS/ClusterCAM models.py (`MCTformerV2.forward_features`) and
vision_transformer.py (`Block`). Token order is [K class tokens; N patch tokens, row-major].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerScale, Mlp, trunc_normal_
from torch import Tensor, nn

from clustercam_pl.models.attention import AttentionOutput, ClusterAttention, Keep, PatchAttention
from clustercam_pl.models.config import NetConfig


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection; any input size (the stride-p conv drops remainder pixels)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, C)


class Block(nn.Module):
    """Pre-norm transformer block whose attention is either `ClusterAttention` or `PatchAttention`.

    The residual update is `x + drop(MHSA) [+ drop(cluster branch)]`, then `x + drop(MLP(norm2(x)))`;
    each DropPath call draws its own mask, as in the reference.

    With `cfg.layer_scale` (DINOv2) each branch is scaled by its own per-channel gamma before the
    residual sum: `ls1` the MHSA, `ls2` the MLP (timm's names and places), and `ls_cluster` the cluster
    branch. The cluster branch is a second attention branch of the same block, so it gets its own
    gamma initialised from the pretrained `ls1` (`checkpoint.imagenet_to_ours`), as its norms and
    projections are initialised from the block's `norm1` / `attn`; unscaled, its update would be out
    of proportion to the gamma-scaled updates the pretrained stream was trained with. Off: no
    parameters, the reference block.
    """

    def __init__(self, cfg: NetConfig, drop_path: float, cluster: bool):
        super().__init__()
        self.cluster = cluster
        dim, nh, K = cfg.embed_dim, cfg.num_heads, cfg.num_classes
        if cluster:
            self.st_attn = ClusterAttention(
                dim, nh, K, cfg.cluster_grid, cfg.cluster_iters, cfg.alpha_init, cfg.qkv_bias,
                fused=cfg.fused_attention,
            )
        else:
            self.attn = PatchAttention(dim, nh, K, cfg.qkv_bias, fused=cfg.fused_attention)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), act_layer=nn.GELU)
        self.ls1, self.ls2, self.ls_cluster = nn.Identity(), nn.Identity(), nn.Identity()
        if cfg.layer_scale is not None:
            self.ls1, self.ls2 = LayerScale(dim, cfg.layer_scale), LayerScale(dim, cfg.layer_scale)
            if cluster:
                self.ls_cluster = LayerScale(dim, cfg.layer_scale)

    @property
    def attention(self) -> ClusterAttention | PatchAttention:
        return self.st_attn if self.cluster else self.attn

    def forward(self, x: Tensor, grid: tuple[int, int], keep: Keep = Keep.NOTHING) -> tuple[Tensor, AttentionOutput]:
        a = self.attention(x, grid, keep)
        x = x + self.drop_path(self.ls1(a.delta))
        if a.cluster_delta is not None:
            x = x + self.drop_path(self.ls_cluster(a.cluster_delta))
        x = x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
        if a.record is not None:
            a.record.tokens = x
        return x, a


@dataclass
class BackboneOutput:
    class_tokens: Tensor  # (B, K, C)
    patch_tokens: Tensor  # (B, C, h, w)
    c2p: Tensor  # (B, L, nh, K, N): every block's (mixed) class-to-patch attention
    blocks: list[AttentionOutput]  # per block; side outputs filled as the entry asked (`Keep`)


class ClusterViT(nn.Module):
    """ViT with K class tokens and the cluster module in the chosen blocks (shapes from `NetConfig`).

    One forward, three uses: `forward` (training and prediction), `forward(x, Keep.QK)` or
    `Keep.P2P` (what CAM propagation needs, see `ClusterCAMNet.cam_inputs`) and `Keep.RECORD`
    (every attention map, see `ClusterCAMNet.forward_intermediates`).
    """

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg  # the one source of the shapes: read cfg.embed_dim, cfg.depth, ... from it
        K, C, g = cfg.num_classes, cfg.embed_dim, cfg.pos_grid
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, C)
        self.cls_token = nn.Parameter(torch.zeros(1, K, C))
        self.pos_embed = nn.Parameter(torch.zeros(1, K + g * g, C))
        dpr = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        clusters = cfg.cluster_block_set
        self.blocks = nn.ModuleList(Block(cfg, dpr[i], i in clusters) for i in range(cfg.depth))
        self._init_weights()

    def _init_weights(self) -> None:
        trunc_normal_(self.cls_token, std=0.02)
        trunc_normal_(self.pos_embed, std=0.02)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    @property
    def has_clusters(self) -> bool:
        return any(b.cluster for b in self.blocks)

    @property
    def min_input_size(self) -> tuple[int, int]:
        """The smallest input (height, width) in pixels: one cluster cell of patches (one patch without
        cluster blocks); smaller inputs cannot be cut into cells."""
        gh, gw = self.cfg.cluster_grid if self.has_clusters else (1, 1)
        return gh * self.cfg.patch_size, gw * self.cfg.patch_size

    @property
    def min_input_side(self) -> int:
        """The smallest side an input of any aspect may have: `min_input_size` in both directions."""
        return max(self.min_input_size)

    def patch_grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid of an input, checked against the cluster cell (a clear error, not a reshape crash)."""
        p = self.cfg.patch_size
        h, w = height // p, width // p
        min_h, min_w = self.min_input_size
        if height < min_h or width < min_w:
            gh, gw = self.cfg.cluster_grid
            raise ValueError(
                f"input of {height}x{width} pixels gives a {h}x{w} patch grid, smaller than one cluster "
                f"cell of {gh}x{gw} patches: inputs must be at least {min_h}x{min_w} pixels"
            )
        return h, w

    def pos_embed_for(self, height: int, width: int, grid: tuple[int, int]) -> Tensor:
        """Position embedding for an input of this size: (1, K + h*w, C).

        Matches the reference bit for bit: bicubic with `scale_factor=(h + 0.1) / g` (not `size=`),
        skipped only for a square input with the pre-training patch count.
        """
        K = self.cfg.num_classes
        n0 = self.pos_embed.shape[1] - K
        h, w = grid
        if h * w == n0 and height == width:
            return self.pos_embed
        g = math.sqrt(n0)
        C = self.cfg.embed_dim
        patch = self.pos_embed[:, K:].reshape(1, int(g), int(g), C).permute(0, 3, 1, 2)  # (1, C, g, g)
        patch = F.interpolate(patch, scale_factor=((h + 0.1) / g, (w + 0.1) / g), mode="bicubic")
        patch = patch.permute(0, 2, 3, 1).reshape(1, h * w, C)  # (1, N, C)
        return torch.cat([self.pos_embed[:, :K], patch], dim=1)

    def alphas(self) -> Tensor:
        """The cluster weight alpha of every cluster block, (L_c,); empty without cluster blocks."""
        mix = [b.st_attn.mix_param for b in self.blocks if b.cluster]
        return torch.cat(mix) if mix else self.cls_token.new_zeros(0)

    def forward(self, x: Tensor, keep: Keep = Keep.NOTHING) -> BackboneOutput:
        """x (B, in_chans, H, W) normalised (`cfg.normalization`); `keep` says what each block keeps besides
        its output."""
        B, N, H, W = x.shape
        if N != self.cfg.in_chans:
            raise ValueError(f"input has {N} channels (shape {tuple(x.shape)}), the network takes "
                             f"net.in_chans={self.cfg.in_chans}")
        grid = self.patch_grid(H, W)
        tokens = self.patch_embed(x)  # (B, N, C)
        tokens = torch.cat([self.cls_token.expand(B, -1, -1), tokens], dim=1)  # (B, T, C)
        tokens = tokens + self.pos_embed_for(H, W, grid)
        outs = []
        for blk in self.blocks:
            tokens, a = blk(tokens, grid, keep)
            outs.append(a)
        K = self.cfg.num_classes
        patches = tokens[:, K:].transpose(1, 2).reshape(B, self.cfg.embed_dim, *grid)  # (B, C, h, w)
        return BackboneOutput(
            class_tokens=tokens[:, :K],
            patch_tokens=patches,
            c2p=torch.stack([a.c2p_mixed for a in outs], dim=1),  # (B, L, nh, K, N)
            blocks=outs,
        )
