"""Evaluation of checkpoints on a split: the protocols, the loop, checkpoint selection, the report, the
VOC server export. Plain arguments only (the entry point is `clustercam_pl.eval`).

Each protocol (`conf/eval/`) is a set of input scales, an optional flip and an optional dense CRF;
predictions come from `clustercam_pl.inference.network.predict`, the path in-training validation uses.
Several checkpoints are each evaluated; the LAST (by epoch/step, else name order) and the BEST on the
evaluated split are reported, and the summary says which one is quoted. Choosing the best on the split
that is scored is selection on the test data; the reference does exactly that (best of 30 checkpoints
on val).

On N processes (`clustercam_pl.utils.distributed`), each evaluates its share of the images (each image
once) and writes their PNGs; the confusion matrices are summed, so the numbers are those of one
process. The dense CRF runs in a `CRFPool` of worker processes alongside the network.
"""

from __future__ import annotations

import logging
import math
import os
import tarfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from clustercam_pl.checkpoint import LoadedCheckpoint, find_checkpoints, load_checkpoint, natural_key
from clustercam_pl.data.imageio import write_index_png
from clustercam_pl.inference.crf import CRFParams, CRFPool, default_crf_workers, require_crf, to_uint8_image
from clustercam_pl.inference.network import crop_predictions, predict
from clustercam_pl.metrics import confusion_matrix, iou_from_confmat
from clustercam_pl.utils.distributed import Ranks
from clustercam_pl.utils.results import iou_table

log = logging.getLogger("clustercam_pl.eval")

SELECTION_NOTE = (
    "best = highest mIoU on the evaluated split itself, i.e. checkpoint selection on the data that is "
    "scored (optimistic); the reference quotes the best of 30 checkpoints (epochs 50-79) chosen on val"
)
VOC_TEST_IMAGES = 1456


# -------------------------------------------------------------------------------------- protocol
@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol: input scales, flip, optional CRF."""

    name: str
    scales: tuple[float, ...]
    flip: bool
    crf: CRFParams | None

    @classmethod
    def from_values(
        cls, name: str, scales: Sequence[float], flip: bool, crf: Mapping[str, Any] | None
    ) -> Protocol:
        """From plain config values; `crf` None = no CRF, a dict (empty: the reference's) = CRF settings."""
        try:
            params = CRFParams(**crf) if crf is not None else None
        except TypeError as e:
            raise ValueError(f"eval.crf: unknown key ({e}); allowed: {list(CRFParams().as_dict())}") from e
        values = tuple(float(s) for s in scales)
        if not values or any(s <= 0 for s in values):
            raise ValueError(f"eval.scales must be positive numbers, got {list(scales)}")
        return cls(str(name), values, bool(flip), params)

    def describe(self) -> str:
        scales = ", ".join(f"{s:g}" for s in self.scales)
        parts = [
            f"protocol {self.name}: scales [{scales}]"
            + (" (input resized bilinearly, align_corners=True), max fusion of softmax"
               if len(self.scales) > 1 else ", softmax of the decoder"),
            "with horizontal flip" if self.flip else "no flip",
        ]
        if self.crf:
            c = self.crf
            parts.append(
                f"dense CRF (Gaussian sxy {c.gauss_sxy:g} compat {c.gauss_compat:g}, bilateral sxy "
                f"{c.bilat_sxy:g} srgb {c.bilat_srgb:g} compat {c.bilat_compat:g}, {c.n_iter} iterations)"
            )
        else:
            parts.append("no CRF")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "scales": list(self.scales), "flip": self.flip,
                "crf": self.crf.as_dict() if self.crf else None}


# ----------------------------------------------------------------------------------- selection
def last_index(results: Sequence[dict[str, Any]]) -> int:
    """The latest checkpoint: highest (epoch, step) where the files say, else the last in name order.

    Files with training progress sort after files without; ties keep name order (so `last.ckpt`
    and the step checkpoint it duplicates both qualify; the later name wins).
    """
    def key(i: int) -> tuple[int, int, int, list[Any]]:
        r = results[i]
        known = r["epoch"] is not None or r["global_step"] is not None
        ep = r["epoch"] if r["epoch"] is not None else -1
        st = r["global_step"] if r["global_step"] is not None else -1
        return (int(known), ep, st, natural_key(Path(r["path"]).name))
    return max(range(len(results)), key=key)


def best_index(results: Sequence[dict[str, Any]]) -> int | None:
    """Highest mIoU (None when nothing was scored, e.g. a split without masks)."""
    scored = [i for i, r in enumerate(results) if r["miou"] is not None and not math.isnan(r["miou"])]
    return max(scored, key=lambda i: results[i]["miou"]) if scored else None


# ---------------------------------------------------------------------------------------- export
def voc_results_dir(root: str | os.PathLike, split: str = "test", comp: str = "comp6") -> Path:
    """`<root>/results/VOC2012/Segmentation/<comp>_<split>_cls`: the server's folder layout."""
    return Path(root) / "results" / "VOC2012" / "Segmentation" / f"{comp}_{split}_cls"


def voc_archive_path(root: str | os.PathLike, split: str = "test", comp: str = "comp6") -> Path:
    """`<root>/<comp>_<split>_results.tar.gz`: the archive to upload."""
    return Path(root) / f"{comp}_{split}_results.tar.gz"


def export_voc_results(root: str | os.PathLike, split: str = "test", comp: str = "comp6") -> Path:
    """Pack `<root>/results/...` into `<root>/<comp>_<split>_results.tar.gz` for upload (atomically).

    The archive's top folder is `results/`, as the VOC evaluation server expects; each PNG is an
    indexed image with the VOC palette whose pixel values are class indices 0..20.
    """
    folder = voc_results_dir(root, split, comp)
    pngs = sorted(folder.glob("*.png"))
    if not pngs:
        raise FileNotFoundError(f"no predictions to pack in {folder}")
    archive = voc_archive_path(root, split, comp)
    tmp = archive.with_name(archive.name + ".part")
    with tarfile.open(tmp, "w:gz") as tar:
        for png in pngs:
            tar.add(png, arcname=str(png.relative_to(root)))
    os.replace(tmp, archive)
    return archive


# ------------------------------------------------------------------------------------ evaluation
def _label_maps(
    net: torch.nn.Module, loader: DataLoader, protocol: Protocol, device: torch.device, crf_pool: CRFPool | None
) -> Iterator[tuple[tuple[str, Tensor | None], Tensor]]:
    """((image_id, mask (h, w) or None), label map (h, w)) of every image of `loader`, in its order.

    With the CRF, each image's job goes to `crf_pool` as soon as its batch is predicted, and the
    next batch is predicted while the pool works.
    """
    def predicted() -> Iterator[tuple[tuple[str, Tensor | None], Tensor, Tensor]]:
        for batch in loader:
            image = batch["image"].to(device)  # (B, 3, H, W), padded
            size = batch.get("image_size")  # (B, 2) or None
            probs = predict(net, image, protocol.scales, protocol.flip, size).probs  # (B, K+1, H, W)
            masks = crop_predictions(batch["mask"], size) if "mask" in batch else [None] * image.shape[0]
            for i, (image_id, mask) in enumerate(zip(batch["image_id"], masks, strict=True)):
                h, w = (int(size[i, 0]), int(size[i, 1])) if size is not None else image.shape[-2:]
                yield (image_id, mask), image[i, :, :h, :w], probs[i, :, :h, :w]  # (3, h, w), (K+1, h, w)

    if protocol.crf is None:
        for key, _, probs in predicted():
            yield key, probs.argmax(dim=0)
        return
    assert crf_pool is not None, "a protocol with CRF needs a CRFPool"
    jobs = ((key, to_uint8_image(img), p.float().cpu().numpy()) for key, img, p in predicted())
    for key, labels in crf_pool.imap(jobs, chunk=getattr(loader, "batch_size", None) or 1):
        yield key, torch.from_numpy(labels)


def evaluate_network(
    ckpt: LoadedCheckpoint,
    loader: DataLoader,
    protocol: Protocol,
    device: torch.device,
    has_masks: bool,
    export_dir: Path | None = None,
    crf_pool: CRFPool | None = None,
    ranks: Ranks | None = None,
) -> dict[str, Any]:
    """Run one network over the loader (this process's share); mIoU against the masks, PNGs into
    `export_dir` if given. Counts are summed over `ranks`, so every process returns the whole result.
    """
    ranks = ranks or Ranks(device=device)
    net = ckpt.net.to(device).eval()
    C = net.cfg.num_classes + 1
    confmat = torch.zeros(C, C, dtype=torch.long, device=device)  # (C, C) rows: mask
    pool = crf_pool if crf_pool is not None or protocol.crf is None else CRFPool(protocol.crf, 0)
    n_images, t0 = 0, time.perf_counter()
    for (image_id, mask), pred in _label_maps(net, loader, protocol, device, pool):  # pred (h, w)
        if has_masks and mask is not None:
            confmat += confusion_matrix(pred.to(device), mask.to(device), C)
        if export_dir is not None:
            write_index_png(export_dir / f"{image_id}.png", pred.to(torch.uint8).cpu().numpy())
        n_images += 1
    seconds = ranks.max(time.perf_counter() - t0)
    confmat = ranks.sum(confmat)
    per_process = ranks.gather(n_images)
    n_images = sum(per_process)
    result: dict[str, Any] = {
        "path": ckpt.path, "kind": ckpt.kind, "epoch": ckpt.epoch, "global_step": ckpt.global_step,
        "images": n_images, "images_per_process": per_process, "seconds": round(seconds, 3),
        "images_per_s": round(n_images / seconds, 3) if seconds > 0 else None,
        "miou": None, "per_class": None,
    }
    if has_masks and n_images:
        miou, per_class = iou_from_confmat(confmat.cpu())
        result["miou"] = float(miou.float())
        result["per_class"] = [float(v) for v in per_class.float()]
    ckpt.net.cpu()
    return result


def _fmt(miou: float | None) -> str:
    return "   n/a" if miou is None or math.isnan(miou) else f"{100 * miou:6.2f}"


def report(summary: dict[str, Any]) -> str:
    """The printed result: protocol, per-checkpoint mIoU, last / best / quoted, per-class table."""
    lines = [summary["protocol_text"],
             f"data {summary['dataset']}, split {summary['split']}, {summary['num_images']} images, "
             f"device {summary['device']}" + (f" x {n} processes" if (n := summary.get("processes", 1)) > 1 else "")]
    ckpts = summary["checkpoints"]
    if len(ckpts) > 1:
        lines.append(f"{'checkpoint':<60} {'epoch':>5} {'step':>8} {'mIoU':>6}")
        for r in ckpts:
            ep = "-" if r["epoch"] is None else r["epoch"]
            st = "-" if r["global_step"] is None else r["global_step"]
            lines.append(f"{r['path'][-60:]:<60} {ep:>5} {st:>8} {_fmt(r['miou'])}")
        lines.append(f"last: {summary['last']['path']}  mIoU {_fmt(summary['last']['miou'])}")
        if summary["best"] is not None:
            best = summary["best"]
            lines.append(f"best: {best['path']}  mIoU {_fmt(best['miou'])}  ({SELECTION_NOTE})")
    quoted = summary["quoted"]
    if summary["miou"] is None:
        lines.append(f"{quoted} checkpoint {summary['quoted_path']}: no masks on split {summary['split']}, "
                     "nothing scored")
    else:
        lines.append(f"mIoU {_fmt(summary['miou'])} ({summary['protocol']['name']}, "
                     f"split {summary['split']}, quoted: the {quoted} checkpoint {summary['quoted_path']})")
        names = list(summary["per_class_iou"])
        lines.append(iou_table([summary["per_class_iou"][n] for n in names], names))
    if summary.get("export_archive"):
        lines.append(f"VOC server export: {summary['export_archive']}")
    return "\n".join(lines)


def evaluate_checkpoints(
    ckpt_spec: str | os.PathLike | Sequence[str | os.PathLike],
    datamodule: Any,
    split: str,
    protocol: Protocol,
    device: torch.device,
    out_dir: Path,
    quote: str = "last",
    limit: int | None = None,
    export_comp: str | None = None,
    net_overrides: Mapping[str, Any] | None = None,
    crf_workers: int | None = None,
    ranks: Ranks | None = None,
) -> dict[str, Any]:
    """Evaluate every checkpoint of `ckpt_spec` (file, list, glob, run folder) with `protocol` on `split`
    of `datamodule` (a `WSSSDataModule`).

    `export_comp` (e.g. "comp6") also writes the predictions as the VOC server expects them and packs
    them (one checkpoint only). Writes nothing else; returns the summary `report` prints.
    `crf_workers`: CRF worker processes (None: the available cores shared by this machine's
    processes; 0: in this process). `ranks` (`distributed.launch`): each process evaluates its share
    of the images and writes their PNGs; the confusion matrices are summed, the main process packs
    the export, and every process returns the summary one process would.
    """
    ranks = ranks or Ranks(device=device)
    if protocol.crf is not None:
        require_crf()  # before any slow work
    if quote not in ("last", "best"):
        raise ValueError(f"quote={quote!r} must be 'last' or 'best'")
    paths = find_checkpoints(ckpt_spec)
    if export_comp and len(paths) > 1:
        raise ValueError(
            f"export=true writes the predictions of one checkpoint, but ckpt_path gives {len(paths)}: "
            "pick one (e.g. the best on val from eval_metrics.json)"
        )
    dm = datamodule
    dataset = dm.eval_dataset(split)
    has_masks = bool(getattr(dataset, "with_mask", False))
    if limit is not None and int(limit) < 1:
        raise ValueError(f"limit={limit} must be a positive number of images (or null for all)")
    num_images = min(int(limit), len(dataset)) if limit is not None else len(dataset)
    loader = dm.eval_loader(split, ranks.shard(range(num_images)))  # no padding: each image once
    if not has_masks and not export_comp and ranks.is_main:
        log.warning("split %s has no masks: nothing will be scored (export=true writes predictions)", split)
    export_dir = voc_results_dir(out_dir, split, export_comp) if export_comp else None
    if export_dir is not None:
        export_dir.mkdir(parents=True, exist_ok=True)

    workers = default_crf_workers(ranks.local_world_size) if crf_workers is None else crf_workers
    if ranks.is_main:
        log.info("%s", protocol.describe())
        if protocol.crf is not None:
            log.info("dense CRF in %s", f"{workers} worker process(es) per process" if workers else "the main process")
    results = []
    # One batch per worker round trip; in flight: two batches per worker and the next batch, whose
    # forward pass overlaps their CRF.
    chunk = int(getattr(dm, "val_batch_size", 1) or 1)
    with CRFPool(protocol.crf, workers, max_pending=(2 * workers + 1) * chunk) as pool:
        if protocol.crf is not None:
            pool.start()  # the workers start while the checkpoint loads
        for path in paths:
            ckpt = load_checkpoint(path, **(net_overrides or {}))
            if ckpt.net.cfg.num_classes != dm.num_classes:
                raise ValueError(
                    f"{path} predicts {ckpt.net.cfg.num_classes} classes but data={dm.dataset} has {dm.num_classes}: "
                    "pass the data config the network was trained with (e.g. data=synthetic and its options)"
                )
            result = evaluate_network(ckpt, loader, protocol, device, has_masks, export_dir, pool, ranks)
            if ranks.is_main:
                log.info("%s: mIoU %s (%d images, %.1f s)", path, _fmt(result["miou"]), result["images"],
                         result["seconds"])
            results.append(result)

    names = ["background", *dm.class_names]
    for r in results:
        if r["per_class"] is not None:
            r["per_class"] = dict(zip(names, r["per_class"], strict=True))
    i_last, i_best = last_index(results), best_index(results)
    if quote == "best" and i_best is None:
        log.warning("quote=best, but nothing was scored on split %s: quoting the last checkpoint", split)
        quote = "last"
    quoted = results[i_best if quote == "best" else i_last]
    summary: dict[str, Any] = {
        "protocol": protocol.as_dict(),
        "protocol_text": protocol.describe(),
        "dataset": dm.dataset,
        "split": split,
        "num_images": num_images,
        "device": str(device),
        "processes": ranks.world_size,
        "crf_workers": workers if protocol.crf is not None else None,
        "checkpoints": results,
        "last": {k: results[i_last][k] for k in ("path", "miou")},
        "best": None if i_best is None else {k: results[i_best][k] for k in ("path", "miou")},
        "selection_note": SELECTION_NOTE,
        "quoted": quote,
        "quoted_path": quoted["path"],
        "miou": quoted["miou"],
        "per_class_iou": quoted["per_class"],
        "run_dir": str(out_dir),
    }
    if export_dir is not None:
        ranks.barrier()  # every process's PNGs are written
        if ranks.is_main:
            export_voc_results(out_dir, split, export_comp)
        summary["export_archive"] = str(voc_archive_path(out_dir, split, export_comp))
        if dm.dataset == "voc" and split == "test" and num_images != VOC_TEST_IMAGES and ranks.is_main:
            log.warning("the VOC test set has %d images, this export has %d (limit=%s): the server will "
                        "refuse it", VOC_TEST_IMAGES, num_images, limit)
    return summary
