"""The multi-class-token ViT backbone of ClusterCAM (DeiT layout, K class tokens).

Reference: DCVL-WSSS/ClusterCAM models.py (`MCTformerV2.forward_features`) and
vision_transformer.py (`Block`). Token order is [K class tokens; N patch tokens, row-major].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import Tensor, nn

from clustercam_pl.models.attention import AttentionRecord, ClusterAttention, PatchAttention


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
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_classes: int,
        mlp_ratio: float,
        drop_path: float,
        cluster: bool,
        cluster_grid: tuple[int, int],
        cluster_iters: int,
        alpha_init: float | None,
        qkv_bias: bool = True,
    ):
        super().__init__()
        self.cluster = cluster
        if cluster:
            self.st_attn = ClusterAttention(
                dim, num_heads, num_classes, cluster_grid, cluster_iters, alpha_init, qkv_bias
            )
        else:
            self.attn = PatchAttention(dim, num_heads, num_classes, qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    @property
    def attention(self) -> ClusterAttention | PatchAttention:
        return self.st_attn if self.cluster else self.attn

    def forward(self, x: Tensor, grid: tuple[int, int], materialize: bool, keep_qk: bool, record: bool):
        a = self.attention(x, grid, materialize, keep_qk, record)
        x = x + self.drop_path(a.delta)
        if a.cluster_delta is not None:
            x = x + self.drop_path(a.cluster_delta)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        if a.record is not None:
            a.record.tokens = x
        return x, a


@dataclass
class BackboneOutput:
    class_tokens: Tensor  # (B, K, C)
    patch_tokens: Tensor  # (B, C, h, w)
    c2p: Tensor  # (B, L, nh, K, N): every block's (mixed) class-to-patch attention
    qk: list[tuple[Tensor, Tensor]] | None  # per block (B, nh, T, d) query and key, for propagation
    records: list[AttentionRecord] | None


class ClusterViT(nn.Module):
    """ViT with K class tokens and the cluster module in the chosen blocks.

    Args:
        num_classes: K, one class token per foreground class.
        embed_dim, depth, num_heads, mlp_ratio, patch_size: the ViT shape (DeiT-S: 384, 12, 6, 4, 16).
        pos_grid: side of the square position-embedding grid (14 for 224-pixel pre-training); other
            inputs resample it on every forward, exactly as the reference does.
        cluster_blocks: indices of the blocks that carry the cluster module (None: all).
        cluster_grid, cluster_iters, alpha_init: see `ClusterAttention`.
        drop_path_rate: stochastic depth, linear from 0 over the blocks (reference 0.1).
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
        qkv_bias: bool = True,
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        blocks = set(range(depth)) if cluster_blocks is None else {int(i) for i in cluster_blocks}
        if bad := sorted(i for i in blocks if not 0 <= i < depth):
            raise ValueError(f"cluster_blocks {bad} outside 0..{depth - 1}")
        self.num_classes, self.embed_dim, self.depth, self.num_heads = num_classes, embed_dim, depth, num_heads
        self.patch_size = patch_size
        self.cluster_grid = (int(cluster_grid[0]), int(cluster_grid[1]))
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, num_classes, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_classes + pos_grid * pos_grid, embed_dim))
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, num_classes, mlp_ratio, dpr[i], i in blocks, self.cluster_grid,
                  cluster_iters, alpha_init, qkv_bias)
            for i in range(depth)
        )
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

    def patch_grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid of an input, checked against the cluster cell (a clear error, not a reshape crash)."""
        h, w = height // self.patch_size, width // self.patch_size
        gh, gw = self.cluster_grid
        min_h, min_w = (gh if self.has_clusters else 1), (gw if self.has_clusters else 1)
        if h < min_h or w < min_w:
            raise ValueError(
                f"input of {height}x{width} pixels gives a {h}x{w} patch grid, smaller than one cluster "
                f"cell of {gh}x{gw} patches: inputs must be at least "
                f"{min_h * self.patch_size}x{min_w * self.patch_size} pixels"
            )
        return h, w

    def pos_embed_for(self, height: int, width: int, grid: tuple[int, int]) -> Tensor:
        """Position embedding for an input of this size: (1, K + h*w, C).

        Matches the reference bit for bit: bicubic with `scale_factor=(h + 0.1) / g` (not `size=`),
        skipped only for a square input with the pre-training patch count.
        """
        K = self.num_classes
        n0 = self.pos_embed.shape[1] - K
        h, w = grid
        if h * w == n0 and height == width:
            return self.pos_embed
        g = math.sqrt(n0)
        C = self.embed_dim
        patch = self.pos_embed[:, K:].reshape(1, int(g), int(g), C).permute(0, 3, 1, 2)  # (1, C, g, g)
        patch = F.interpolate(patch, scale_factor=((h + 0.1) / g, (w + 0.1) / g), mode="bicubic")
        patch = patch.permute(0, 2, 3, 1).reshape(1, h * w, C)  # (1, N, C)
        return torch.cat([self.pos_embed[:, :K], patch], dim=1)

    def forward(
        self, x: Tensor, materialize: bool = False, keep_qk: bool = False, record: bool = False
    ) -> BackboneOutput:
        """x (B, 3, H, W) ImageNet-normalised.

        Args:
            materialize: compute every attention matrix explicitly (the reference's way).
            keep_qk: keep each block's queries and keys for patch-to-patch CAM propagation.
            record: keep every block's attention maps and tokens (`AttentionRecord`).
        """
        B, _, H, W = x.shape
        grid = self.patch_grid(H, W)
        tokens = self.patch_embed(x)  # (B, N, C)
        tokens = torch.cat([self.cls_token.expand(B, -1, -1), tokens], dim=1)  # (B, T, C)
        tokens = tokens + self.pos_embed_for(H, W, grid)
        c2p, qk, records = [], [], []
        for blk in self.blocks:
            tokens, a = blk(tokens, grid, materialize, keep_qk, record)
            c2p.append(a.c2p_mixed)
            qk.append(a.qk)
            records.append(a.record)
        K = self.num_classes
        patches = tokens[:, K:].transpose(1, 2).reshape(B, self.embed_dim, *grid)  # (B, C, h, w)
        return BackboneOutput(
            class_tokens=tokens[:, :K],
            patch_tokens=patches,
            c2p=torch.stack(c2p, dim=1),  # (B, L, nh, K, N)
            qk=qk if keep_qk else None,
            records=records if record else None,
        )
