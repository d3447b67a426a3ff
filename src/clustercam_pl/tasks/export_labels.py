"""Pseudo labels and CAMs of a whole split on disk, resumable, scored where the split has masks.

For every image (network in eval mode):

    <out_dir>/labels/<id>.png   palette PNG: 0 background, c + 1 class c, 255 ignore (PAR-refined);
                                data without a background class: c = class c, no ignore band
    <out_dir>/cams/<id>.npz     cams float16 (n, H/d, W/d): the multi-scale CAMs of the n labelled
                                classes `classes` (int16, 0-based), min-max normalised, at 1/d size
                                (d = cam_downscale, area-averaged); image_size (H, W); and, where
                                the split has masks, this image's confusion matrices (rows: mask)
    <out_dir>/meta.json         checkpoint fingerprint and settings; a rerun with others is refused
    <out_dir>/pseudo_label_metrics.json

Resumable: every file is written atomically (`utils.files.atomic_write`), so a killed run leaves only
partial files, which a rerun deletes; an image is done when both of its files exist and read back.
One run at a time owns `out_dir` (`utils.files.OutputFolder`): a second is refused, naming the first. The
mIoU sums the per-image confusion matrices stored in the npz files, so resumed images count
without being recomputed. On N processes (`clustercam_pl.utils.distributed`) each image belongs to one
process's share, and the sums are summed across processes. Plain arguments only (the entry point
is `clustercam_pl.export_labels`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clustercam_pl.cam.config import CAMConfig
from clustercam_pl.cam.par import PAR
from clustercam_pl.checkpoint import LoadedCheckpoint
from clustercam_pl.data.imageio import write_index_png
from clustercam_pl.data.labels import IGNORE_INDEX, label_names
from clustercam_pl.inference.network import (
    cam_prediction,
    crop_predictions,
    pseudo_labels_per_image,
    scored_pseudo_label,
)
from clustercam_pl.metrics import confusion_matrix, iou_from_confmat
from clustercam_pl.models import ClusterCAMNet
from clustercam_pl.utils.distributed import Ranks
from clustercam_pl.utils.files import OutputFolder, atomic_write, file_sha256
from clustercam_pl.utils.progress import CostMeter
from clustercam_pl.utils.results import iou_table, write_metrics

log = logging.getLogger("clustercam_pl.export_labels")

META_FORMAT = 1
CONFMAT_KEYS = ("confmat_pseudo", "confmat_pseudo_valid", "confmat_cam")


# ----------------------------------------------------------------------------------------- files
def output_paths(out_dir: Path, image_id: str) -> tuple[Path, Path]:
    return out_dir / "labels" / f"{image_id}.png", out_dir / "cams" / f"{image_id}.npz"


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Compressed npz through `atomic_write`: never half-written under its own name; a full disk or a
    size limit is a `WriteError` naming the file and the cause."""
    path.parent.mkdir(parents=True, exist_ok=True)  # ids of folder datasets are paths (train/cat/001)
    with atomic_write(path) as f:  # a file object: np.savez would append ".npz" to a name
        np.savez_compressed(f, **arrays)


def read_done(out_dir: Path, image_id: str, num_classes: int) -> dict[str, np.ndarray] | None:
    """The stored confusion matrices of a finished image ({} without masks); None if not (fully) done."""
    png, npz = output_paths(out_dir, image_id)
    if not (png.is_file() and npz.is_file()):
        return None
    try:
        with Image.open(png) as im:
            im.size  # noqa: B018  (reads the header: a truncated or foreign file fails here)
        with np.load(npz) as z:
            out = {k: np.asarray(z[k]) for k in CONFMAT_KEYS if k in z.files}
            _ = z["image_size"]
    except Exception as e:  # anything unreadable is redone, never trusted
        log.warning("redoing %s: its output does not read back (%s: %s)", image_id, type(e).__name__, e)
        return None
    if any(v.shape != (num_classes, num_classes) for v in out.values()):
        log.warning("redoing %s: stored confusion matrices are not %dx%d", image_id, num_classes, num_classes)
        return None
    return out


def dataset_ids(dataset: Any) -> list[str]:
    """Image ids in item order, without reading images: every dataset kind names its items (`item_id`,
    data.fixed_labels.RawSource); any other dataset is read item by item."""
    if hasattr(dataset, "item_id"):
        return [dataset.item_id(i) for i in range(len(dataset))]
    return [dataset[i]["image_id"] for i in range(len(dataset))]


def cam_meta(cam: CAMConfig) -> dict[str, Any]:
    return asdict(cam) | {"scales": list(cam.scales), "par_dilations": list(cam.par_dilations)}


# ----------------------------------------------------------------------------------------- batch
def process_batch(
    batch: dict[str, Any], net: torch.nn.Module, par: PAR, cam: CAMConfig, device: torch.device,
    out_dir: Path, cam_downscale: int,
) -> list[dict[str, np.ndarray]]:
    """Pseudo labels and CAMs of one batch, written to disk; returns each image's confusion matrices."""
    image, cls_label = batch["image"].to(device), batch["cls_label"].to(device)  # (B, 3, H, W), (B, K)
    size = batch.get("image_size")
    cams, pseudo = pseudo_labels_per_image(net, par, image, cls_label, cam, size)  # (B, K, H, W), (B, H, W)
    C = net.cfg.num_labels  # K + 1 label values with a background class, K without
    background = cam.cam_background if net.cfg.background else None  # the CAM metric's background score
    masks = crop_predictions(batch["mask"], size) if "mask" in batch else [None] * image.shape[0]
    stats = []
    for i, (image_id, label, mask) in enumerate(
        zip(batch["image_id"], crop_predictions(pseudo, size), masks, strict=True)
    ):
        h, w = label.shape
        present = torch.nonzero(cls_label[i] > 0).flatten()  # (n,)
        cam_i = cams[i, present, :h, :w]  # (n, h, w)
        small = (max(h // cam_downscale, 1), max(w // cam_downscale, 1))
        cam_small = F.interpolate(cam_i[None], size=small, mode="area")[0] if cam_downscale > 1 else cam_i
        arrays: dict[str, np.ndarray] = {
            "cams": cam_small.cpu().numpy().astype(np.float16),  # (n, h/d, w/d)
            "classes": present.cpu().numpy().astype(np.int16),
            "image_size": np.array([h, w], dtype=np.int32),
        }
        if mask is not None:
            mask = mask.to(device)
            counts = {
                "confmat_pseudo": confusion_matrix(scored_pseudo_label(label, IGNORE_INDEX), mask, C),
                "confmat_pseudo_valid": confusion_matrix(label, mask, C, ignore_pred=IGNORE_INDEX),
                "confmat_cam": confusion_matrix(cam_prediction(cams[i, :, :h, :w], background, cls_label[i]), mask, C),
            }
            arrays |= {k: v.cpu().numpy() for k, v in counts.items()}
        png, npz = output_paths(out_dir, image_id)
        write_npz(npz, **arrays)  # the CAM first: an image counts as done when both exist
        write_index_png(png, label.to(torch.uint8).cpu().numpy(), background=net.cfg.background)
        stats.append({k: arrays[k] for k in CONFMAT_KEYS if k in arrays})
    return stats


# ------------------------------------------------------------------------------------------- run
def export_split(
    ckpt: LoadedCheckpoint,
    datamodule: Any,
    split: str,
    cam: CAMConfig,
    out_dir: Path,
    device: torch.device,
    cam_downscale: int = 4,
    limit: int | None = None,
    overwrite: bool = False,
    ranks: Ranks | None = None,
) -> dict[str, Any]:
    """Write (or complete) the pseudo labels and CAMs of `split`; return the summary (mIoU with masks).

    `datamodule` is a `WSSSDataModule` (its `eval_dataset` / `eval_loader` give the split).
    `ranks` (`distributed.launch`): each process checks and computes its share of the images (each
    image's files are written by one process); `out_dir` is claimed (`utils.files.OutputFolder`: meta
    checked by every process, one run at a time, partials of dead writers cleared); the confusion
    matrices are summed, and the main process writes the metrics. Every process returns the summary
    one process would.
    """
    ranks = ranks or Ranks(device=device)
    if cam_downscale < 1:
        raise ValueError(f"cam_downscale={cam_downscale} must be >= 1")
    dm = datamodule
    dataset = dm.eval_dataset(split)
    info = getattr(dataset, "info", None)
    if info is not None and not info.has_labels:
        raise ValueError(f"split {split!r} of {dm.root} has no image-level labels: pseudo labels need them")
    has_masks = bool(getattr(dataset, "with_mask", False))
    ids = dataset_ids(dataset)
    if limit is not None:
        if int(limit) < 1:
            raise ValueError(f"limit={limit} must be a positive number of images (or null for all)")
        ids = ids[: int(limit)]
    if not isinstance(ckpt.net, ClusterCAMNet):
        raise ValueError(f"{ckpt.path} holds a stage-two {type(ckpt.net).__name__}, which makes no CAMs: export "
                         "pseudo labels from a ClusterCAM checkpoint, or run predict / eval on this one")
    if ckpt.net.cfg.num_classes != dm.num_classes:
        raise ValueError(
            f"{ckpt.path} predicts {ckpt.net.cfg.num_classes} classes but data={dm.dataset} has {dm.num_classes}: "
            "pass the data config the network was trained with"
        )
    ckpt.check_background(dm.has_background, dm.dataset)
    ckpt.check_channels(dm.in_channels, dm.normalization, dm.dataset)
    meta = {
        "format": META_FORMAT, "checkpoint": ckpt.path,
        "checkpoint_sha256": ranks.from_main(lambda: file_sha256(ckpt.path)), "dataset": dm.dataset,
        "split": split, "cam": cam_meta(cam), "cam_downscale": cam_downscale, "network_mode": "eval",
    }
    # `checkpoint` (the path) may change between runs of the same weights: the sha256 decides.
    with OutputFolder(out_dir, meta, command="export_labels", overwrite=overwrite, ignore=("checkpoint",)).claim(ranks):
        for sub in ("labels", "cams"):
            (out_dir / sub).mkdir(parents=True, exist_ok=True)
        if cam.train_mode and ranks.is_main:
            log.info("CAMs are made in eval mode (deterministic); cam.train_mode=true applies to training only")
        mine = ranks.shard(range(len(ids)))  # this process's items; each image in one share
        stats, todo = _done(ids, mine, out_dir, ckpt.net.cfg.num_labels, has_masks, overwrite)
        n_done, n_todo = (int(v) for v in ranks.sum(torch.tensor([len(stats), len(todo)])))
        if ranks.is_main:
            log.info("%s %s: %d images, %d already done, %d to do -> %s%s", dm.dataset, split, len(ids), n_done,
                     n_todo, out_dir, f" ({ranks.world_size} processes)" if ranks.distributed else "")
        t0 = time.perf_counter()
        _export(ckpt.net, dm, split, todo, cam, out_dir, device, cam_downscale, ranks, stats)
        seconds = ranks.max(time.perf_counter() - t0)
        per_process = ranks.gather(len(todo))
        summary: dict[str, Any] = {
            "checkpoint": ckpt.path, "checkpoint_kind": ckpt.kind, "dataset": dm.dataset, "split": split,
            "out_dir": str(out_dir), "num_images": len(ids), "computed": n_todo,
            "resumed": len(ids) - n_todo, "seconds": round(seconds, 3),
            "images_per_s": round(n_todo / seconds, 3) if n_todo and seconds > 0 else None,
            "cam": meta["cam"], "cam_downscale": cam_downscale,
            "processes": ranks.world_size, "computed_per_process": per_process,
        }
        names = label_names(dm.class_names, dm.has_background)
        if has_masks and ids:
            C = len(names)
            mine_ids = [ids[i] for i in mine]
            totals = {k: ranks.sum(torch.from_numpy(summed_confmats(stats, mine_ids, k, C))).numpy()
                      for k in CONFMAT_KEYS}
            summary |= score_totals(totals, names)
        summary["text"] = report(summary, cam, dm.dataset, split, names, dm.has_background)
        if ranks.is_main:
            write_metrics(out_dir / "pseudo_label_metrics.json", summary)
    return summary


def _done(ids: Sequence[str], mine: Sequence[int], out_dir: Path, C: int, has_masks: bool,
          overwrite: bool) -> tuple[dict[str, dict[str, np.ndarray]], list[int]]:
    """The stored confusion matrices of this process's finished images, and the indices still to do."""
    stats: dict[str, dict[str, np.ndarray]] = {}
    if not overwrite:
        for i in mine:
            done = read_done(out_dir, ids[i], C)
            if done is not None and (done or not has_masks):
                stats[ids[i]] = done
    return stats, [i for i in mine if ids[i] not in stats]


def _export(net: torch.nn.Module, dm: Any, split: str, todo: Sequence[int], cam: CAMConfig, out_dir: Path,
            device: torch.device, cam_downscale: int, ranks: Ranks, stats: dict[str, dict[str, np.ndarray]]) -> None:
    """Pseudo labels and CAMs of the items `todo` of `split`, their confusion matrices into `stats`;
    progress about every tenth of them (main process)."""
    if not todo:
        return
    net = net.to(device).eval()
    par = PAR(dilations=cam.par_dilations, num_iter=cam.par_iters).to(device)
    t0 = time.perf_counter()
    every = max(len(todo) // 10, 1)
    n = 0
    loader = dm.eval_loader(split, list(todo))
    meter = CostMeter(len(todo), "export_labels", enabled=ranks.is_main, probe=2 * (loader.batch_size or 1))
    for batch in loader:
        for image_id, s in zip(batch["image_id"], process_batch(
                batch, net, par, cam, device, out_dir, cam_downscale), strict=True):
            stats[image_id] = s
            meter.update(1, output_paths(out_dir, image_id))
        before, n = n, n + len(batch["image_id"])
        if ranks.is_main and (n // every != before // every or n == len(todo)):
            rate = n / (time.perf_counter() - t0)
            log.info("%d / %d images%s (%.2f images/s, ~%.0f s left)", n, len(todo),
                     " of the main process's share" if ranks.distributed else "", rate, (len(todo) - n) / rate)
    meter.close()


def summed_confmats(stats: dict[str, dict[str, np.ndarray]], ids: Sequence[str], key: str, C: int) -> np.ndarray:
    """The (C, C) int64 sum of the images' `key` confusion matrices (zeros for no image)."""
    total = np.zeros((C, C), dtype=np.int64)
    for i in ids:
        total += stats[i][key]
    return total


def score_confmats(
    stats: dict[str, dict[str, np.ndarray]], ids: Sequence[str], names: Sequence[str]
) -> dict[str, Any]:
    """`score_totals` of the per-image confusion matrices of `ids`, summed."""
    return score_totals({k: summed_confmats(stats, ids, k, len(names)) for k in CONFMAT_KEYS}, names)


def score_totals(totals: dict[str, np.ndarray], names: Sequence[str]) -> dict[str, Any]:
    """mIoU and per-class IoU of the summed confusion matrices (pseudo, pseudo without the ignore
    band, CAM), and the fraction of pixels in the ignore band."""
    out: dict[str, Any] = {}
    for key, metric in (("confmat_pseudo", "pseudo_miou"), ("confmat_pseudo_valid", "pseudo_miou_valid"),
                        ("confmat_cam", "cam_miou")):
        total = np.asarray(totals[key])
        miou, per_class = iou_from_confmat(torch.from_numpy(total))
        out[metric] = float(miou)
        out[f"{metric}_per_class"] = dict(zip(names, per_class.tolist(), strict=True))
        if metric == "pseudo_miou_valid":
            scored_all = np.asarray(totals["confmat_pseudo"]).sum()
            out["ignored_fraction"] = float(1 - total.sum() / max(scored_all, 1))
    return out


def report(summary: dict[str, Any], cam: CAMConfig, dataset: str, split: str, names: Sequence[str],
           background: bool = True) -> str:
    head = f"{dataset} {split}: {summary['num_images']} images in {summary['out_dir']}"
    if "pseudo_miou" not in summary:
        return head + " (no masks: no mIoU)"
    if not background:  # no ignore band, no background score: the CAM is its argmax over the image's classes
        lines = [f"pseudo-label mIoU {100 * summary['pseudo_miou']:.2f} (no background class: every pixel "
                 f"labelled); CAM mIoU {100 * summary['cam_miou']:.2f} (argmax over the image's classes)"]
        per = summary["pseudo_miou_per_class"]
        lines.append(iou_table([per[n] for n in names], list(names)))
        return head + "\n" + "\n".join(lines)
    lines = [
        f"pseudo-label mIoU {100 * summary['pseudo_miou']:.2f} (ignore band scored as background), "
        f"{100 * summary['pseudo_miou_valid']:.2f} on the {100 * (1 - summary['ignored_fraction']):.1f}% "
        f"of pixels not ignored; CAM mIoU {100 * summary['cam_miou']:.2f} (background score "
        f"{cam.cam_background:g})"
    ]
    per = summary["pseudo_miou_per_class"]
    lines.append(iou_table([per[n] for n in names], list(names)))
    return head + "\n" + "\n".join(lines)
