"""Export pseudo labels and CAMs: `python -m clustercam_pl.pseudo_labels ckpt_path=... [split=train_aug]`.

For every image of the split (network in eval mode, CAM settings from `conf/cam`):

    <out_dir>/labels/<id>.png   palette PNG: 0 background, c + 1 class c, 255 ignore (PAR-refined)
    <out_dir>/cams/<id>.npz     cams float16 (n, H/d, W/d): the multi-scale CAMs of the n labelled
                                classes `classes` (int16, 0-based), min-max normalised, at 1/d size
                                (d = cam_downscale, area-averaged); image_size (H, W); and, where
                                the split has masks, this image's confusion matrices (rows: mask)
    <out_dir>/meta.json         checkpoint fingerprint and settings; a rerun with others is refused
    <out_dir>/pseudo_label_metrics.json

Resumable: every file is written to `<name>.part` and renamed, so a killed run leaves only `.part`
files, which a rerun deletes; an image is done when both of its files exist and read back. The
mIoU sums the per-image confusion matrices stored in the npz files, so resumed images count
without being recomputed. `run_pseudo_labels(cfg)` is importable; `main` is the Hydra wrapper.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import Tensor
from torch.utils.data import Subset

from clustercam_pl.cam.config import CAMConfig
from clustercam_pl.cam.par import PAR
from clustercam_pl.data.imageio import write_index_png
from clustercam_pl.entry import iou_table, run_dir, write_metrics
from clustercam_pl.inference import cams_and_pseudo_labels, crop_predictions, load_checkpoint, resolve_device

log = logging.getLogger("clustercam_pl.pseudo_labels")

META_FORMAT = 1
CONFMAT_KEYS = ("confmat_pseudo", "confmat_pseudo_valid", "confmat_cam")


# ----------------------------------------------------------------------------------------- files
def output_paths(out_dir: Path, image_id: str) -> tuple[Path, Path]:
    return out_dir / "labels" / f"{image_id}.png", out_dir / "cams" / f"{image_id}.npz"


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Compressed npz written to `<name>.part`, then renamed: never half-written under its own name."""
    path.parent.mkdir(parents=True, exist_ok=True)  # folder datasets' ids are paths (scans/p01/001)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)


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


def remove_partials(out_dir: Path) -> int:
    """Delete the `.part` files an interrupted run left behind (they are never read)."""
    n = 0
    for sub in ("labels", "cams"):
        for f in (out_dir / sub).glob("*.part"):
            f.unlink(missing_ok=True)
            n += 1
    return n


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_meta(out_dir: Path, meta: dict[str, Any], overwrite: bool) -> None:
    """Refuse to mix outputs of another checkpoint or other settings into `out_dir`; then record ours."""
    path = out_dir / "meta.json"
    if path.is_file() and not overwrite:
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(meta) if k != "checkpoint" and old.get(k) != meta.get(k))
        if diff:
            detail = "; ".join(f"{k}: stored {old.get(k)!r}, now {meta.get(k)!r}" for k in diff)
            raise ValueError(
                f"{out_dir} holds pseudo labels made with other settings ({detail}). "
                "Pass another out_dir=..., or overwrite=true to redo every image there."
            )
    write_metrics(path, meta)


# --------------------------------------------------------------------------------------- metrics
def confusion_matrix(
    pred: Tensor, target: Tensor, num_classes: int, ignore_pred: int | None = None
) -> np.ndarray:
    """int64 (C, C) counts, rows = target, columns = prediction, over pixels with 0 <= target < C
    (and pred != ignore_pred when given): the reference's `Evaluator` convention."""
    valid = (target >= 0) & (target < num_classes)  # (H, W)
    if ignore_pred is not None:
        valid &= pred != ignore_pred
    idx = target[valid] * num_classes + pred[valid]
    counts = torch.bincount(idx, minlength=num_classes * num_classes)  # (C * C,)
    return counts.view(num_classes, num_classes).cpu().numpy()


def miou_from_confmat(confmat: np.ndarray) -> tuple[float, np.ndarray]:
    """VOC-convention mIoU (NaN-aware mean over classes in prediction or target) and per-class IoU."""
    cm = confmat.astype(np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    per_class = np.divide(tp, union, out=np.full_like(tp, np.nan), where=union > 0)
    return (float(np.nanmean(per_class)) if np.isfinite(per_class).any() else float("nan")), per_class


# ------------------------------------------------------------------------------------------- run
def dataset_ids(dataset: Any) -> list[str]:
    """Image ids in item order, without decoding images where the dataset lists them."""
    ids = getattr(dataset, "ids", None)
    return list(ids) if ids is not None else [dataset[i]["image_id"] for i in range(len(dataset))]


def process_batch(
    batch: dict[str, Any], net: torch.nn.Module, par: PAR, cam: CAMConfig, device: torch.device,
    out_dir: Path, cam_downscale: int,
) -> list[dict[str, np.ndarray]]:
    """Pseudo labels and CAMs of one batch, written to disk; returns each image's confusion matrices."""
    image, cls_label = batch["image"].to(device), batch["cls_label"].to(device)  # (B, 3, H, W), (B, K)
    size = batch.get("image_size")
    cams, pseudo = cams_and_pseudo_labels(net, par, image, cls_label, cam, size)  # (B, K, H, W), (B, H, W)
    C = net.num_classes + 1
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
            scored = torch.where(label == cam.ignore_index, 0, label)  # ignore band counted as background
            bg = torch.full((1, h, w), cam.cam_background, device=device)
            cam_pred = torch.cat([bg, cams[i, :, :h, :w]], dim=0).argmax(0)  # (h, w) CAM + constant bg
            arrays["confmat_pseudo"] = confusion_matrix(scored, mask, C)
            arrays["confmat_pseudo_valid"] = confusion_matrix(label, mask, C, ignore_pred=cam.ignore_index)
            arrays["confmat_cam"] = confusion_matrix(cam_pred, mask, C)
        png, npz = output_paths(out_dir, image_id)
        write_npz(npz, **arrays)  # the CAM first: an image counts as done when both exist
        write_index_png(png, label.to(torch.uint8).cpu().numpy())
        stats.append({k: arrays[k] for k in CONFMAT_KEYS if k in arrays})
    return stats


def _default_out_dir(cfg: DictConfig, dataset: str, split: str) -> Path:
    return Path(str(cfg.paths.root_dir)) / "outputs" / "pseudo_labels" / f"{dataset}_{split}"


def run_pseudo_labels(cfg: DictConfig) -> dict[str, Any]:
    """Write (or complete) the pseudo labels and CAMs of a split; return and write the metrics."""
    cam: CAMConfig = instantiate(cfg.cam, _convert_="all")
    cam_downscale = int(cfg.get("cam_downscale", 4))
    if cam_downscale < 1:
        raise ValueError(f"cam_downscale={cam_downscale} must be >= 1")
    device = resolve_device(cfg.get("device", "auto"))
    overrides = cfg.get("net_overrides")
    overrides = dict(OmegaConf.to_container(overrides, resolve=True)) if overrides is not None else {}

    dm = instantiate(cfg.data, _convert_="all")
    split = str(cfg.split) if cfg.get("split") else dm.train_split
    dm.val_split = split
    dm.setup("validate")
    dataset = dm.val_dataset
    info = getattr(dataset, "info", None)
    if info is not None and not info.has_labels:
        raise ValueError(f"split {split!r} of {dm.root} has no image-level labels: pseudo labels need them")
    has_masks = bool(getattr(dataset, "with_mask", False))
    ids = dataset_ids(dataset)
    limit = cfg.get("limit")
    if limit is not None:
        if int(limit) < 1:
            raise ValueError(f"limit={limit} must be a positive number of images (or null for all)")
        ids = ids[: int(limit)]

    ckpt_path = str(cfg.ckpt_path)
    ckpt = load_checkpoint(ckpt_path, **overrides)
    net = ckpt.net
    if net.num_classes != dm.num_classes:
        raise ValueError(
            f"{ckpt_path} predicts {net.num_classes} classes but data={dm.dataset} has {dm.num_classes}: "
            "pass the data config the network was trained with"
        )
    out_dir = Path(str(cfg.out_dir)) if cfg.get("out_dir") else _default_out_dir(cfg, dm.dataset, split)
    for sub in ("labels", "cams"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    meta = {
        "format": META_FORMAT, "checkpoint": ckpt_path, "checkpoint_sha256": file_sha256(ckpt_path),
        "dataset": dm.dataset, "split": split, "cam": asdict(cam) | {"scales": list(cam.scales),
        "par_dilations": list(cam.par_dilations)}, "cam_downscale": cam_downscale, "network_mode": "eval",
    }
    check_meta(out_dir, meta, bool(cfg.get("overwrite", False)))
    if removed := remove_partials(out_dir):
        log.info("removed %d partial file(s) left by an interrupted run", removed)
    if cam.train_mode:
        log.info("CAMs are made in eval mode (deterministic); cam.train_mode=true applies to training only")

    C = net.num_classes + 1
    stats: dict[str, dict[str, np.ndarray]] = {}
    if not cfg.get("overwrite", False):
        for image_id in ids:
            done = read_done(out_dir, image_id, C)
            if done is not None and (done or not has_masks):
                stats[image_id] = done
    todo = [i for i, image_id in enumerate(ids) if image_id not in stats]
    log.info("%s %s: %d images, %d already done, %d to do -> %s", dm.dataset, split, len(ids), len(stats),
             len(todo), out_dir)

    net = net.to(device).eval()
    par = PAR(dilations=cam.par_dilations, num_iter=cam.par_iters).to(device)
    t0 = time.perf_counter()
    if todo:
        dm.val_dataset = Subset(dataset, todo)
        every = max(len(todo) // 10, 1)
        n = 0
        for batch in dm.val_dataloader():
            for image_id, s in zip(batch["image_id"], process_batch(
                    batch, net, par, cam, device, out_dir, cam_downscale), strict=True):
                stats[image_id] = s
            before, n = n, n + len(batch["image_id"])
            if n // every != before // every or n == len(todo):
                rate = n / (time.perf_counter() - t0)
                log.info("%d / %d images (%.2f images/s, ~%.0f s left)", n, len(todo), rate,
                         (len(todo) - n) / rate)
    seconds = time.perf_counter() - t0

    summary: dict[str, Any] = {
        "checkpoint": ckpt_path, "checkpoint_kind": ckpt.kind, "dataset": dm.dataset, "split": split,
        "out_dir": str(out_dir), "num_images": len(ids), "computed": len(todo),
        "resumed": len(ids) - len(todo), "seconds": round(seconds, 3),
        "images_per_s": round(len(todo) / seconds, 3) if todo and seconds > 0 else None,
        "cam": meta["cam"], "cam_downscale": cam_downscale,
    }
    names = ["background", *dm.class_names]
    if has_masks and ids:
        lines = []
        for key, metric in (("confmat_pseudo", "pseudo_miou"), ("confmat_pseudo_valid", "pseudo_miou_valid"),
                            ("confmat_cam", "cam_miou")):
            total = sum(stats[i][key] for i in ids)
            miou, per_class = miou_from_confmat(total)
            summary[metric] = miou
            summary[f"{metric}_per_class"] = dict(zip(names, per_class.tolist(), strict=True))
            if metric == "pseudo_miou_valid":
                scored_all = sum(stats[i]["confmat_pseudo"] for i in ids).sum()
                summary["ignored_fraction"] = float(1 - total.sum() / max(scored_all, 1))
        lines.append(
            f"pseudo-label mIoU {100 * summary['pseudo_miou']:.2f} (ignore band scored as background), "
            f"{100 * summary['pseudo_miou_valid']:.2f} on the {100 * (1 - summary['ignored_fraction']):.1f}% "
            f"of pixels not ignored; CAM mIoU {100 * summary['cam_miou']:.2f} (background score "
            f"{cam.cam_background:g})"
        )
        per = summary["pseudo_miou_per_class"]
        lines.append(iou_table([per[n] for n in names], names))
        text = f"{dm.dataset} {split}: {len(ids)} images in {out_dir}\n" + "\n".join(lines)
    else:
        text = f"{dm.dataset} {split}: {len(ids)} images in {out_dir} (no masks: no mIoU)"
    print(text, flush=True)
    write_metrics(out_dir / "pseudo_label_metrics.json", summary)
    try:
        write_metrics(run_dir(cfg) / "pseudo_label_metrics.json", summary)
    except Exception as e:  # outside a Hydra run paths.output_dir may not resolve
        log.debug("no run folder for the metrics: %s", e)
    return summary


@hydra.main(config_path="conf", config_name="pseudo_labels", version_base="1.3")
def main(cfg: DictConfig) -> float:
    summary = run_pseudo_labels(cfg)
    return float(summary.get("pseudo_miou", float("nan")))


if __name__ == "__main__":
    main()
