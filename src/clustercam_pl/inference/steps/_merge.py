"""Merging segments (superpixels, SAM masks, any segmenter's regions) with a label map.

One rule for every label-refinement step: a segment takes the class that covers more than
``threshold`` of its labelled (non-void) pixels, over all of it (void pixels inside included); a
segment no class dominates, and every pixel outside all segments, keeps its label. Segments vote on
the *input* labels (a decision never depends on another segment's result); where segments overlap,
the smaller one is applied last, so the finer segment wins. Shared by ``superpixel`` (a partition),
``segments``, ``sam`` and ``sam2`` (overlapping masks).
"""

from __future__ import annotations

import numpy as np

from clustercam_pl.inference.steps import IGNORE


def check_labels(labels: np.ndarray, key: str) -> None:
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"image {key!r}: labels must be uint8 (H, W), got {labels.dtype} {labels.shape}")


def vote(counts: np.ndarray, threshold: float) -> np.ndarray:
    """The class each segment takes: (N, L) label counts of N segments (void not counted) -> (N,) int
    class index, -1 where no class covers more than ``threshold`` of the segment's labelled pixels."""
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold={threshold} must be in [0, 1): the share of a segment one class must exceed")
    total = counts.sum(1)  # (N,)
    best = counts.argmax(1)  # (N,)
    share = counts[np.arange(len(counts)), best] / np.maximum(total, 1)  # (N,)
    return np.where((total > 0) & (share > threshold), best, -1)


def merge_partition(labels: np.ndarray, segments: np.ndarray, threshold: float) -> np.ndarray:
    """Labels (H, W) uint8 after the vote of each region of a partition ``segments`` (H, W) int >= 0."""
    if segments.shape != labels.shape:
        raise ValueError(f"segments {segments.shape} and labels {labels.shape} differ in size")
    seg = segments.astype(np.int64).ravel()  # (HW,)
    lab = labels.ravel().astype(np.int64)  # (HW,)
    n, L = int(seg.max()) + 1, int(IGNORE) + 1
    valid = lab != IGNORE
    counts = np.bincount(seg[valid] * L + lab[valid], minlength=n * L).reshape(n, L)  # (N, 256)
    winner = vote(counts, threshold)  # (N,)
    out = np.where(winner[seg] >= 0, winner[seg], lab)  # (HW,)
    return out.reshape(labels.shape).astype(np.uint8)


def merge_masks(labels: np.ndarray, masks: np.ndarray, threshold: float) -> np.ndarray:
    """Labels (H, W) uint8 after the vote of each of the (N, H, W) bool ``masks`` (they may overlap)."""
    if masks.ndim != 3 or masks.shape[1:] != labels.shape:
        raise ValueError(f"masks {masks.shape} must be (N, H, W) with (H, W) = labels {labels.shape}")
    out = labels.copy()
    if len(masks) == 0:
        return out
    flat = masks.reshape(len(masks), -1)  # (N, HW)
    lab = labels.ravel()  # (HW,)
    valid = lab != IGNORE
    classes = np.unique(lab[valid])  # (L,)
    if classes.size == 0:
        return out
    onehot = (lab[valid][:, None] == classes[None]).astype(np.float32)  # (V, L)
    counts = flat[:, valid].astype(np.float32) @ onehot  # (N, L) labelled pixels of each class
    winner = vote(counts, threshold)  # (N,) index into classes
    order = np.argsort(-flat.sum(1), kind="stable")  # largest first: smaller masks overwrite
    out_flat = out.reshape(-1)
    for i in order:
        if winner[i] >= 0:
            out_flat[flat[i]] = classes[winner[i]]
    return out
