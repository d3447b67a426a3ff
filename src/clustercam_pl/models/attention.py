"""Attention layers of the ClusterCAM ViT: plain MHSA and the clustering-based attention module.

Dimension letters used throughout: B batch, C channels, nh heads, d head dim, K class tokens,
N patch tokens (h * w patch grid), T = K + N tokens, M cluster tokens.

Parameter names (`ln_pat`, `qkv`, `proj_st`, `qkv_stsa`, `mix_param`, ...) are the reference's
(DCVL-WSSS/ClusterCAM vision_transformer.py, class `STAttention`), so that released checkpoints load
without renaming. The class names follow the paper.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def split_heads(qkv: Tensor, num_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """(B, T, 3C) -> three (B, nh, T, d) tensors."""
    B, T, C3 = qkv.shape
    qkv = qkv.reshape(B, T, 3, num_heads, C3 // (3 * num_heads)).permute(2, 0, 3, 1, 4)  # (3, B, nh, T, d)
    return qkv[0], qkv[1], qkv[2]


def merge_heads(x: Tensor) -> Tensor:
    """(B, nh, T, d) -> (B, T, nh * d)."""
    B, nh, T, d = x.shape
    return x.transpose(1, 2).reshape(B, T, nh * d)


def attend(
    q: Tensor, k: Tensor, v: Tensor, num_rows: int, scale: float, materialize: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Attention output plus the softmax rows of the first `num_rows` queries.

    ClusterCAM needs the class-token rows of every attention matrix (they become CAM features and
    carry gradients), but never the full (T, T) matrix in the training forward. The fused path
    computes the output with scaled-dot-product attention (no (T, T) tensor kept for backward) and
    only the K class rows explicitly. `materialize=True` computes the whole softmax as the reference
    does and also returns it; both paths are tested equal.

    Args:
        q, k, v: (B, nh, T, d).
    Returns:
        out (B, nh, T, d), class rows (B, nh, num_rows, T), full attention (B, nh, T, T) or None.
    """
    if materialize:
        attn = ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1)  # (B, nh, T, T)
        return attn @ v, attn[:, :, :num_rows], attn
    out = F.scaled_dot_product_attention(q, k, v, scale=scale)  # (B, nh, T, d)
    rows = ((q[:, :, :num_rows] @ k.transpose(-2, -1)) * scale).softmax(dim=-1)  # (B, nh, K, T)
    return out, rows, None


class Keep(enum.Enum):
    """What an attention layer keeps beyond its output, for the caller's use of the forward pass.

    NOTHING: training (the class-to-patch rows only); QK: the queries and keys, from which fused
    CAM propagation recomputes patch-to-patch attention; P2P: the head-mean patch-to-patch matrix
    (the materialising path's propagation); RECORD: every map, for analysis (`AttentionRecord`).
    """

    NOTHING = "nothing"
    QK = "qk"
    P2P = "p2p"
    RECORD = "record"


def materialize_for(keep: Keep, fused: bool) -> bool:
    """Whether the full (T, T) softmax is formed: the materialising path, or to record/keep it."""
    return not fused or keep in (Keep.P2P, Keep.RECORD)


@dataclass
class AttentionRecord:
    """What one block's attention saw, for parity tests, analysis and the notebook.

    Filled only when a forward pass is asked to record (it materialises every attention matrix).
    """

    p2p: Tensor  # (B, nh, N, N) patch-to-patch attention (slice of the softmax over all T keys)
    c2p: Tensor  # (B, nh, K, N) class-to-patch attention of the standard MHSA
    c2p_mixed: Tensor  # (B, nh, K, N) what the block contributes to the CAM features
    c2clu_mapped: Tensor | None = None  # (B, nh, K, N) cluster-to-class attention mapped to patches
    assign: Tensor | None = None  # (B, N, M) soft assignment of patches to clusters
    cluster_grid: tuple[int, int] | None = None  # (h // gh, w // gw): the M cluster tokens' layout
    tokens: Tensor | None = None  # (B, T, C) block output, filled by the block


@dataclass
class AttentionOutput:
    """One attention module's result inside a block."""

    delta: Tensor  # (B, T, C) residual update from the standard MHSA branch
    cluster_delta: Tensor | None  # (B, T, C) residual update from the cluster branch
    c2p_mixed: Tensor  # (B, nh, K, N) class-to-patch attention (mixed with clusters if present)
    qk: tuple[Tensor, Tensor] | None = None  # (B, nh, T, d) each, with Keep.QK
    p2p: Tensor | None = None  # (B, N, N) head-mean patch-to-patch attention, with Keep.P2P
    record: AttentionRecord | None = None  # with Keep.RECORD


def side_outputs(
    keep: Keep, q: Tensor, k: Tensor, attn: Tensor | None, num_classes: int
) -> tuple[tuple[Tensor, Tensor] | None, Tensor | None]:
    """The (q, k) or head-mean patch-to-patch matrix (B, N, N) that `keep` asks for."""
    if keep is Keep.QK:
        return (q, k), None
    if keep is Keep.P2P:
        return None, attn[:, :, num_classes:, num_classes:].mean(dim=1)  # (B, N, N)
    return None, None


class PatchAttention(nn.Module):
    """Standard pre-norm MHSA over [class tokens; patch tokens] (blocks without the cluster module).

    Used for the MCTformer-style ablation. The class-to-patch attention of every block feeds the CAM
    features, so switching the cluster module off leaves a working multi-class-token ViT.
    """

    def __init__(
        self, dim: int, num_heads: int, num_classes: int, qkv_bias: bool = True, eps: float = 1e-6,
        fused: bool = True,
    ):
        super().__init__()
        self.num_heads, self.num_classes, self.fused = num_heads, num_classes, fused
        self.scale = (dim // num_heads) ** -0.5
        self.norm1 = nn.LayerNorm(dim, eps=eps)  # DeiT's norm1 (eps 1e-6), not the cluster module's
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, grid: tuple[int, int], keep: Keep = Keep.NOTHING) -> AttentionOutput:
        K = self.num_classes
        q, k, v = split_heads(self.qkv(self.norm1(x)), self.num_heads)  # (B, nh, T, d)
        out, rows, attn = attend(q, k, v, K, self.scale, materialize_for(keep, self.fused))
        c2p = rows[..., K:]  # (B, nh, K, N)
        qk, p2p = side_outputs(keep, q, k, attn, K)
        rec = AttentionRecord(p2p=attn[:, :, K:, K:], c2p=c2p, c2p_mixed=c2p) if keep is Keep.RECORD else None
        return AttentionOutput(self.proj(merge_heads(out)), None, c2p, qk, p2p, rec)


class ClusterAttention(nn.Module):
    """The clustering-based attention module (paper Sec. III; reference class `STAttention`).

    Beside the standard MHSA over all tokens, the patch tokens are clustered into M cluster tokens by
    iterative soft assignment (super-token sampling, STViT), the class tokens attend with the cluster
    tokens, and both the cluster outputs and the cluster-to-class attention are mapped back to every
    patch through the assignment. The CAM feature of this block is
    `(1 - alpha) * A_class->patch + alpha * S @ A_class->cluster`, alpha learnable per block.

    Args:
        dim: token width C.
        num_heads: nh, for both attentions.
        num_classes: K class tokens at the front of the sequence.
        grid: (gh, gw) patch cell averaged into one initial cluster token; M = (h // gh) * (w // gw).
        iters: clustering iterations (reference code 3; the paper text says 10).
        alpha_init: initial mixing weight; None draws U[0, 1) as the reference does.
        fused: fused attention outputs (see `attend`); False materialises every matrix.
        eps: LayerNorm eps of the four attention norms (reference: PyTorch default 1e-5).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_classes: int,
        grid: tuple[int, int] = (2, 2),
        iters: int = 3,
        alpha_init: float | None = None,
        qkv_bias: bool = True,
        eps: float = 1e-5,
        fused: bool = True,
    ):
        super().__init__()
        self.fused = fused
        if iters < 1:
            raise ValueError(f"cluster iters must be >= 1, got {iters}")
        if min(grid) < 1:
            raise ValueError(f"cluster grid must be positive, got {tuple(grid)}")
        self.num_heads, self.num_classes = num_heads, num_classes
        self.grid, self.iters = (int(grid[0]), int(grid[1])), iters
        self.scale = (dim // num_heads) ** -0.5
        self.cluster_scale = dim**-0.5  # the reference scales the affinity by C, not the head dim
        # Branch A: standard MHSA over all tokens.
        self.ln_pat = nn.LayerNorm(dim, eps=eps)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        # Branch B: clustering and class <-> cluster attention.
        self.proj_st = nn.Linear(dim, dim)
        self.ln_pat2 = nn.LayerNorm(dim, eps=eps)
        self.ln_cls = nn.LayerNorm(dim, eps=eps)
        self.ln_st = nn.LayerNorm(dim, eps=eps)
        self.qkv_stsa = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj_cls = nn.Linear(dim, dim)
        alpha = torch.rand(1) if alpha_init is None else torch.full((1,), float(alpha_init))
        self.mix_param = nn.Parameter(alpha)

    def cluster(self, patches: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Soft-cluster patch tokens. patches (B, N, C) -> assignment S (B, N, M), clusters Z (B, M, C)."""
        h, w = grid
        gh, gw = self.grid
        B, N, C = patches.shape
        p = self.ln_pat2(self.proj_st(patches)).transpose(1, 2)  # (B, C, N)
        z = F.adaptive_avg_pool2d(p.reshape(B, C, h, w), (h // gh, w // gw)).flatten(2)  # (B, C, M)
        for _ in range(self.iters):
            s = ((p.transpose(1, 2) @ z) * self.cluster_scale).softmax(dim=2)  # (B, N, M)
            z = (p @ s) / (1e-8 + s.sum(dim=1, keepdim=True))  # (B, C, M): S-weighted mean per cluster
        return s, z.transpose(1, 2)

    def forward(self, x: Tensor, grid: tuple[int, int], keep: Keep = Keep.NOTHING) -> AttentionOutput:
        K = self.num_classes
        materialize = materialize_for(keep, self.fused)
        cls, pat = x[:, :K], x[:, K:]  # (B, K, C), (B, N, C)

        # Branch A: MHSA over [class; patch] tokens.
        q, k, v = split_heads(self.qkv(self.ln_pat(x)), self.num_heads)  # (B, nh, T, d)
        out, rows, attn = attend(q, k, v, K, self.scale, materialize)
        delta = self.proj(merge_heads(out))  # (B, T, C)
        c2p = rows[..., K:]  # (B, nh, K, N)

        # Branch B: cluster, attend class <-> cluster tokens, map back through the assignment.
        s, z = self.cluster(pat, grid)  # (B, N, M), (B, M, C)
        u = torch.cat([self.ln_cls(cls), self.ln_st(z)], dim=1)  # (B, K + M, C)
        q2, k2, v2 = split_heads(self.qkv_stsa(u), self.num_heads)  # (B, nh, K + M, d)
        out2, rows2, _ = attend(q2, k2, v2, K, self.scale, not self.fused)
        out2 = merge_heads(out2)  # (B, K + M, C)
        cls_out = self.proj_cls(out2[:, :K])  # (B, K, C)
        pat_out = s @ out2[:, K:]  # (B, N, C): no output projection, as in the reference
        # (B, nh * K, M) @ (B, M, N): one batched product per image. Broadcasting S over the heads
        # instead would copy it nh times (a (B, nh, M, N) tensor) in the forward and the backward.
        B, nh = rows2.shape[:2]
        c2clu_mapped = (rows2[..., K:].flatten(1, 2) @ s.transpose(1, 2)).view(B, nh, K, -1)  # (B, nh, K, N)
        alpha = self.mix_param
        c2p_mixed = (1 - alpha) * c2p + alpha * c2clu_mapped  # (B, nh, K, N)

        rec = None
        if keep is Keep.RECORD:
            mh, mw = grid[0] // self.grid[0], grid[1] // self.grid[1]
            rec = AttentionRecord(attn[:, :, K:, K:], c2p, c2p_mixed, c2clu_mapped, s, (mh, mw))
        qk, p2p = side_outputs(keep, q, k, attn, K)
        return AttentionOutput(delta, torch.cat([cls_out, pat_out], dim=1), c2p_mixed, qk, p2p, rec)
