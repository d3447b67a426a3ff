"""Evaluation of checkpoints on a split: the protocols, the loop, checkpoint selection, the report, the
VOC server export. Plain arguments only (the entry point is `clustercam_pl.eval`).

Each protocol (`conf/eval/`, `clustercam_pl.inference.protocol.Protocol`) is a set of input scales, an
optional flip and post-processing steps (the dense CRF, ...); label maps come from
`clustercam_pl.inference.protocol` (the network's probabilities through `inference.network.predict`,
the path in-training validation uses, then the steps).
Several checkpoints are each evaluated; the LAST (by epoch/step, else name order) and the BEST on the
evaluated split are reported, and the summary says which one is quoted. Choosing the best on the split
that is scored is selection on the test data; the reference does exactly that (best of 30 checkpoints
on val).

On N processes (`clustercam_pl.utils.distributed`), each evaluates its share of the images (each image
once) and writes their PNGs; the confusion matrices are summed, so the numbers are those of one
process. Post-processing steps run in a `StepPool` of worker processes alongside the network.

Resumable: every image's confusion counts go, as they are computed, into a small npz record
(`<out_dir>/per_image/[<i>_<checkpoint>/]<id>.npz`, written atomically; after the image's export PNG
when exporting). A rerun into the same folder with the same checkpoints, data and protocol
(`meta.json`) skips the images whose record reads back and sums the stored counts, so its mIoU is
exactly that of an uninterrupted run, on any number of processes; a rerun with other settings is
refused (`overwrite=true` recomputes everything).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import tarfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from clustercam_pl.checkpoint import LoadedCheckpoint, find_checkpoints, load_checkpoint
from clustercam_pl.data.imageio import write_index_png
from clustercam_pl.data.labels import label_names, num_labels
from clustercam_pl.inference.network import crop_predictions
from clustercam_pl.inference.pool import StepPool, default_workers
from clustercam_pl.inference.protocol import Protocol, input_normalization, network_crops, postprocess
from clustercam_pl.inference.scores import expand_scores, reduce_scores
from clustercam_pl.metrics import confusion_matrix, iou_from_confmat
from clustercam_pl.tasks.export_labels import dataset_ids, write_npz
from clustercam_pl.tasks.voc_archive import ArchiveError, check_voc_archive, dataset_sizes
from clustercam_pl.utils.distributed import Ranks
from clustercam_pl.utils.files import OutputFolder, atomic_write, file_sha256, natural_key, write_text
from clustercam_pl.utils.progress import CostMeter
from clustercam_pl.utils.results import iou_table, write_metrics

log = logging.getLogger("clustercam_pl.eval")

SELECTION_NOTE = (
    "best = highest mIoU on the evaluated split itself, i.e. checkpoint selection on the data that is "
    "scored (optimistic); the reference quotes the best of 30 checkpoints (epochs 50-79) chosen on val"
)
VOC_TEST_IMAGES = 1456
META_FORMAT = 2  # 2: per-image records (resumable); a folder of format 1 is refused by the meta check
REPORT, METRICS = "eval_report.txt", "eval_metrics.json"
RECORDS = "per_image"
# Test hook: a process SIGKILLs itself after writing this many new per-image records (resume tests).
KILL_AFTER_ENV = "CLUSTERCAM_EVAL_KILL_AFTER"


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
    indexed image with the VOC palette whose pixel values are class indices 0..20. Sub-folders (the
    ids of folder datasets are paths such as `batch_a/img_001`) are packed as they are.
    """
    folder = voc_results_dir(root, split, comp)
    pngs = sorted(folder.rglob("*.png"), key=lambda p: p.relative_to(folder).as_posix())
    if not pngs:
        raise FileNotFoundError(f"no predictions to pack in {folder}")
    archive = voc_archive_path(root, split, comp)
    with atomic_write(archive) as f, tarfile.open(fileobj=f, mode="w:gz") as tar:
        for png in pngs:
            tar.add(png, arcname=png.relative_to(root).as_posix())
    return archive


# ------------------------------------------------------------------------------- per-image records
def records_dir(out_dir: Path, index: int, path: str | os.PathLike, several: bool) -> Path:
    """Where the per-image records of the `index`-th checkpoint go (a sub-folder each when several)."""
    return out_dir / RECORDS / f"{index:02d}_{Path(path).stem}" if several else out_dir / RECORDS


def read_record(path: Path, num_classes: int) -> np.ndarray | None:
    """The stored (C, C) int64 confusion counts of a finished image; None if missing or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            confmat = np.asarray(z["confmat"], dtype=np.int64)
    except Exception as e:  # anything unreadable is redone, never trusted
        log.warning("redoing %s: its record does not read back (%s: %s)", path, type(e).__name__, e)
        return None
    return confmat if confmat.shape == (num_classes, num_classes) else None


def resume_state(
    ids: Sequence[str], mine: Sequence[int], records: Path, export_dir: Path | None, num_classes: int,
    overwrite: bool = False,
) -> tuple[np.ndarray, int, list[int]]:
    """(summed (C, C) counts of this process's finished images, how many, the indices still to do).

    An image is finished when its record reads back (and, when exporting, its PNG exists)."""
    total, n_done, todo = np.zeros((num_classes, num_classes), dtype=np.int64), 0, []
    for i in mine:
        confmat = None if overwrite else read_record(records / f"{ids[i]}.npz", num_classes)
        if confmat is None or (export_dir is not None and not (export_dir / f"{ids[i]}.png").is_file()):
            todo.append(i)
        else:
            total += confmat
            n_done += 1
    return total, n_done, todo


def _kill_hook() -> int | None:
    value = os.environ.get(KILL_AFTER_ENV)
    return int(value) if value else None


# ------------------------------------------------------------------------------------ evaluation
@dataclasses.dataclass(frozen=True)
class Scores:
    """Saved class probabilities: written to `save_dir` (save_scores) or read from `from_dir` instead of
    running the network (scores_from), at 1/`factor` resolution (`inference.scores`)."""

    factor: int = 4
    save_dir: Path | None = None
    from_dir: Path | None = None


def _saved_crops(
    ids: Sequence[str], images: Tensor, image_size: Tensor | None, scores: Scores, device: torch.device,
) -> Iterator[tuple[Tensor, Tensor]]:
    """(image (3, h, w), probabilities (C, h, w)) of a padded batch (B, 3, H, W) from saved scores."""
    assert scores.from_dir is not None
    for i, image_id in enumerate(ids):
        h, w = (int(image_size[i, 0]), int(image_size[i, 1])) if image_size is not None else images.shape[-2:]
        path = scores.from_dir / f"{image_id}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: scores_from needs the scores of every image; finish "
                                    f"that eval (rerun it with save_scores=true: it resumes)")
        with np.load(path) as z:
            yield images[i, :, :h, :w], expand_scores(z["scores"], (h, w), device)


def _label_maps(
    net: torch.nn.Module, loader: DataLoader, protocol: Protocol, device: torch.device, pool: StepPool | None,
    scores: Scores | None = None,
) -> Iterator[tuple[Tensor | None, str, np.ndarray]]:
    """(mask (h, w) or None, image_id, label map (h, w) uint8) of every image of `loader`, in its order.

    With post-processing steps, each image goes to `pool` as soon as its batch is predicted, and the
    next batch is predicted while the pool works. `scores`: save the probabilities, or read them
    instead of running `net`.
    """
    masks: dict[str, Tensor | None] = {}

    def predicted() -> Iterator[tuple[str, Tensor, Tensor]]:
        for batch in loader:
            image = batch["image"].to(device)  # (B, 3, H, W), padded
            size = batch.get("image_size")  # (B, 2) or None
            crops = crop_predictions(batch["mask"], size) if "mask" in batch else [None] * image.shape[0]
            if scores is not None and scores.from_dir is not None:
                pairs = _saved_crops(batch["image_id"], image, size, scores, device)
            else:
                pairs = network_crops(net, image, size, protocol)
            for image_id, mask, (img, probs) in zip(batch["image_id"], crops, pairs, strict=True):
                masks[image_id] = mask
                if scores is not None and scores.save_dir is not None:
                    write_npz(scores.save_dir / f"{image_id}.npz", scores=reduce_scores(probs, scores.factor),
                              image_size=np.array(probs.shape[-2:], dtype=np.int32))
                yield image_id, img, probs  # (3, h, w), (C, h, w)

    chunk = getattr(loader, "batch_size", None) or 1
    for image_id, labels in postprocess(predicted(), protocol, pool, chunk=chunk,
                                        normalization=input_normalization(net), background=net.cfg.background):
        yield masks.pop(image_id), image_id, labels


def evaluate_network(
    ckpt: LoadedCheckpoint,
    loader: DataLoader,
    protocol: Protocol,
    device: torch.device,
    has_masks: bool,
    export_dir: Path | None = None,
    pool: StepPool | None = None,
    ranks: Ranks | None = None,
    records: Path | None = None,
    resumed: tuple[np.ndarray, int] | None = None,
    progress: bool = False,
    scores: Scores | None = None,
) -> dict[str, Any]:
    """Run one network over the loader (this process's share); mIoU against the masks, PNGs into
    `export_dir` if given. Counts are summed over `ranks`, so every process returns the whole result.

    `records`: each image's confusion counts are written there as `<id>.npz` as soon as it is done
    (after its PNG); `resumed`: the summed (C, C) counts and number of this process's images that a
    previous run finished (`resume_state`), added to the result. `progress`: a bar with images/s and
    ETA, and an estimate of time and disk from the first batches (main process).
    """
    ranks = ranks or Ranks(device=device)
    net = ckpt.net.to(device).eval()
    C = net.cfg.num_labels  # K + 1 label values with a background class, K without
    confmat = torch.zeros(C, C, dtype=torch.long, device=device)  # (C, C) rows: mask
    n_resumed = 0
    if resumed is not None:
        confmat += torch.from_numpy(resumed[0]).to(device)
        n_resumed = resumed[1]
    kill_after = _kill_hook()
    n_images, t0 = 0, time.perf_counter()
    chunk = int(getattr(loader, "batch_size", None) or 1)
    meter = CostMeter(len(loader.dataset), "eval", enabled=progress and ranks.is_main, probe=2 * chunk)  # type: ignore[arg-type]
    for mask, image_id, labels in _label_maps(net, loader, protocol, device, pool, scores):  # (h, w) uint8
        image_confmat = torch.zeros(C, C, dtype=torch.long, device=device)  # (C, C)
        if has_masks and mask is not None:
            image_confmat = confusion_matrix(torch.from_numpy(labels).to(device).long(), mask.to(device), C)
        confmat += image_confmat
        written = [scores.save_dir / f"{image_id}.npz"] if scores is not None and scores.save_dir else []
        if export_dir is not None:
            write_index_png(export_dir / f"{image_id}.png", labels, background=net.cfg.background)
            written.append(export_dir / f"{image_id}.png")
        if records is not None:  # after the PNG: a record says the image is finished
            write_npz(records / f"{image_id}.npz", confmat=image_confmat.cpu().numpy())
            written.append(records / f"{image_id}.npz")
        meter.update(1, tuple(written))
        n_images += 1
        if kill_after is not None and n_images >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    meter.close()
    seconds = ranks.max(time.perf_counter() - t0)
    confmat = ranks.sum(confmat)
    per_process = [a + b for a, b in zip(ranks.gather(n_images), ranks.gather(n_resumed), strict=True)]
    computed = int(ranks.sum(torch.tensor(n_images)))
    result: dict[str, Any] = {
        "path": ckpt.path, "kind": ckpt.kind, "epoch": ckpt.epoch, "global_step": ckpt.global_step,
        "images": sum(per_process), "images_per_process": per_process, "computed": computed,
        "resumed": sum(per_process) - computed, "seconds": round(seconds, 3),
        "images_per_s": round(computed / seconds, 3) if seconds > 0 and computed else None,
        "miou": None, "per_class": None, **meter.estimate(),
    }
    n_images = sum(per_process)
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
        check = summary.get("export_check") or "ok"
        state = "checked, ready to upload" if check == "ok" else "NOT ready, see the archive check above"
        lines.append(f"VOC server export: {summary['export_archive']} ({state})")
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
    overwrite: bool = False,
    progress: bool = False,
    save_scores: bool = False,
    score_downscale: int = 4,
    scores_from: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Evaluate every checkpoint of `ckpt_spec` (file, list, glob, run folder) with `protocol` on `split`
    of `datamodule` (a `WSSSDataModule`).

    `export_comp` (e.g. "comp6") also writes the predictions as the VOC server expects them and packs
    them (one checkpoint only). Claims `out_dir` (one eval run at a time writes there) and writes the
    report and the summary there (`REPORT`, `METRICS`); returns the summary. `crf_workers`:
    post-processing worker processes (None: the available cores shared by this machine's processes;
    0: in this process). `ranks`
    (`distributed.launch`): each process evaluates its share of the images and writes their PNGs;
    the confusion matrices are summed, the main process packs the export, and every process returns
    the summary one process would. Resumable (see the module's docstring): `meta.json` records the
    checkpoints (sha256), data, split, images and protocol; `overwrite` recomputes every image and
    accepts a folder made with other settings. `progress`: a progress bar and the cost estimate.
    `save_scores`: also keep each image's probabilities at 1/`score_downscale` size in `<out_dir>/scores`
    (one checkpoint); `scores_from`: an eval folder that did, whose scores replace the network (same
    checkpoint, data, scales and flip; any post-processing).
    """
    ranks = ranks or Ranks(device=device)
    protocol.require()  # before any slow work
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
    if not has_masks and not export_comp and ranks.is_main:
        log.warning("split %s has no masks: nothing will be scored (export=true writes predictions)", split)
    meta = eval_meta(paths, dm, split, num_images, protocol, export_comp, net_overrides, ranks)
    scores = _scores(paths, meta, out_dir, save_scores, score_downscale, scores_from)
    if scores is not None:
        meta |= {"score_downscale": scores.factor, "save_scores": scores.save_dir is not None,
                 "scores_from": None if scores.from_dir is None else str(scores.from_dir)}
    with OutputFolder(out_dir, meta, command="eval", overwrite=overwrite,
                      ignore=("checkpoint_paths",)).claim(ranks):
        export_dir = voc_results_dir(out_dir, split, export_comp) if export_comp else None
        if export_dir is not None:
            export_dir.mkdir(parents=True, exist_ok=True)
        workers = default_workers(ranks.local_world_size) if crf_workers is None else crf_workers
        shares = _Shares(dataset_ids(dataset)[:num_images], ranks.shard(range(num_images)), out_dir,
                         len(paths) > 1, overwrite, progress, scores)  # no padding: each image once
        results = _evaluate_paths(paths, dm, split, shares, protocol, device, has_masks, export_dir, workers,
                                  net_overrides, ranks)
        summary = _summary(results, dm, split, protocol, quote, num_images, device, ranks, out_dir)
        summary["crf_workers"] = workers if protocol.steps else None
        if export_dir is not None:
            ranks.barrier()  # every process's PNGs are written
            if ranks.is_main:
                export_voc_results(out_dir, split, export_comp)
            summary["export_archive"] = str(voc_archive_path(out_dir, split, export_comp))
            summary["export_check"] = _check_export(summary["export_archive"], dataset, split, ranks)
            if dm.dataset == "voc" and split == "test" and num_images != VOC_TEST_IMAGES and ranks.is_main:
                log.warning("the VOC test set has %d images, this export has %d (limit=%s): the server will "
                            "refuse it", VOC_TEST_IMAGES, num_images, limit)
        if ranks.is_main:  # while the folder is ours
            write_text(out_dir / REPORT, report(summary) + "\n")
            write_metrics(out_dir / METRICS, summary)
    return summary


def eval_meta(
    paths: Sequence[Path], dm: Any, split: str, num_images: int, protocol: Protocol, export_comp: str | None,
    net_overrides: Mapping[str, Any] | None, ranks: Ranks,
) -> dict[str, Any]:
    """What makes an eval folder's per-image records valid: the checkpoints' contents (hashed by the main
    process), the data, the images and the protocol (as JSON stores it, so a rerun compares equal)."""
    options = dm.kind_config
    meta = {
        "format": META_FORMAT, "command": "eval",
        "checkpoints_sha256": ranks.from_main(lambda: [file_sha256(p) for p in paths]),
        "checkpoint_paths": [str(p) for p in paths],
        "dataset": dm.dataset, "data_root": dm.root,
        "data_options": dataclasses.asdict(options) if dataclasses.is_dataclass(options) else options,
        "split": split, "num_images": num_images, "protocol": protocol.as_dict(),
        "export_comp": export_comp, "net_overrides": dict(net_overrides or {}),
    }
    return json.loads(json.dumps(meta, default=str))


@dataclasses.dataclass(frozen=True)
class _Shares:
    """This process's images (`mine`: indices into `ids`) and where their records go."""

    ids: list[str]
    mine: list[int]
    out_dir: Path
    several: bool
    overwrite: bool
    progress: bool = False
    scores: Scores | None = None


def _scores(
    paths: Sequence[Path], meta: Mapping[str, Any], out_dir: Path, save: bool, factor: int,
    scores_from: str | os.PathLike | None,
) -> Scores | None:
    """The `Scores` of this run (None: neither saved nor read); refuses scores made otherwise."""
    if not save and scores_from is None:
        return None
    if len(paths) > 1:
        raise ValueError(f"save_scores / scores_from work on one checkpoint, but ckpt_path gives {len(paths)}: "
                         "pick one")
    if save and scores_from is not None:
        raise ValueError("save_scores=true and scores_from=... together: the scores are read, not written; drop one")
    if scores_from is None:
        (out_dir / "scores").mkdir(parents=True, exist_ok=True)
        return Scores(int(factor), save_dir=out_dir / "scores")
    folder = Path(scores_from)
    try:
        saved = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"scores_from={folder}: no readable meta.json ({e}); pass the folder of an eval "
                         "run made with save_scores=true") from e
    if not saved.get("save_scores"):
        raise ValueError(f"scores_from={folder}: that eval did not save scores; rerun it with save_scores=true")
    keys = ("checkpoints_sha256", "dataset", "data_root", "data_options", "split")
    differ = [k for k in keys if saved.get(k) != meta.get(k)]
    for k in ("scales", "flip"):  # the forward pass the scores come from
        if saved["protocol"][k] != meta["protocol"][k]:
            differ.append(f"protocol {k} (saved {saved['protocol'][k]}, now {meta['protocol'][k]})")
    if saved.get("num_images", 0) < meta["num_images"]:
        differ.append(f"num_images (saved {saved.get('num_images')}, now {meta['num_images']})")
    if differ:
        raise ValueError(f"scores_from={folder} was made with another {', '.join(differ)}: pass the same "
                         "checkpoint, data and eval scales/flip (only the post-processing may differ)")
    return Scores(int(saved["score_downscale"]), from_dir=folder / "scores")


def _log_cost(path: Path, protocol: Protocol, n_images: int, n_done: int, processes: int, export: bool) -> None:
    """What the loop will do, before it starts: images, scales, flips, post-processing, outputs."""
    passes = len(protocol.scales) * (2 if protocol.flip else 1)
    steps = ", ".join(s.name for s in protocol.steps) or "none"
    log.info("%s: %d images (%d already done, %d to do on %d process(es)); %d scale(s) %s, flip %s = %d "
             "forward pass(es) per image; post-processing: %s; writes a per-image record%s",
             path, n_images, n_done, n_images - n_done, processes, len(protocol.scales), list(protocol.scales),
             "yes" if protocol.flip else "no", passes, steps, " and a PNG" if export else "")


def _check_export(archive: str, dataset: Any, split: str, ranks: Ranks) -> str:
    """"ok", or the archive check's message (logged as an error: the server would refuse it)."""
    message = "ok"
    if ranks.is_main:
        try:
            check_voc_archive(archive, dataset_ids(dataset), dataset_sizes(dataset), split)
        except ArchiveError as e:
            message = str(e)
            log.error("%s", message)
    return ranks.gather(message)[0]


def _evaluate_paths(
    paths: Sequence[Path], dm: Any, split: str, shares: _Shares, protocol: Protocol, device: torch.device,
    has_masks: bool, export_dir: Path | None, workers: int, net_overrides: Mapping[str, Any] | None,
    ranks: Ranks,
) -> list[dict[str, Any]]:
    """`evaluate_network` of every checkpoint, one post-processing pool for all of them."""
    if ranks.is_main:
        log.info("%s", protocol.describe())
        if protocol.steps:
            log.info("post-processing in %s",
                     f"{workers} worker process(es) per process" if workers else "the main process")
    results = []
    # One batch per worker round trip; in flight: two batches per worker and the next batch, whose
    # forward pass overlaps their post-processing.
    chunk = int(getattr(dm, "val_batch_size", 1) or 1)
    with StepPool(protocol.steps, workers, max_pending=(2 * workers + 1) * chunk) as pool:
        pool.start()  # the workers start while the checkpoint loads
        for index, path in enumerate(paths):
            records = records_dir(shares.out_dir, index, path, shares.several)
            records.mkdir(parents=True, exist_ok=True)
            C = num_labels(dm.num_classes, dm.has_background)
            total, n_done_here, todo = resume_state(shares.ids, shares.mine, records, export_dir, C, shares.overwrite)
            n_done = int(ranks.sum(torch.tensor(n_done_here)))
            if ranks.is_main:
                _log_cost(path, protocol, len(shares.ids), n_done, ranks.world_size, export_dir is not None)
            loader = dm.eval_loader(split, todo)
            ckpt = load_checkpoint(path, **(net_overrides or {}))
            if ckpt.net.cfg.num_classes != dm.num_classes:
                raise ValueError(
                    f"{path} predicts {ckpt.net.cfg.num_classes} classes but data={dm.dataset} has {dm.num_classes}: "
                    "pass the data config the network was trained with (e.g. data=synthetic and its options)"
                )
            ckpt.check_background(dm.has_background, dm.dataset)
            ckpt.check_channels(dm.in_channels, dm.normalization, dm.dataset)
            result = evaluate_network(ckpt, loader, protocol, device, has_masks, export_dir, pool, ranks,
                                      records=records, resumed=(total, n_done_here), progress=shares.progress,
                                      scores=shares.scores)
            if ranks.is_main:
                log.info("%s: mIoU %s (%d images, %.1f s)", path, _fmt(result["miou"]), result["images"],
                         result["seconds"])
            results.append(result)
    return results


def _summary(
    results: list[dict[str, Any]], dm: Any, split: str, protocol: Protocol, quote: str, num_images: int,
    device: torch.device, ranks: Ranks, out_dir: Path,
) -> dict[str, Any]:
    """The summary `report` prints: every checkpoint's result, the last, the best, the quoted one."""
    names = label_names(dm.class_names, dm.has_background)
    for r in results:
        if r["per_class"] is not None:
            r["per_class"] = dict(zip(names, r["per_class"], strict=True))
    i_last, i_best = last_index(results), best_index(results)
    if quote == "best" and i_best is None:
        log.warning("quote=best, but nothing was scored on split %s: quoting the last checkpoint", split)
        quote = "last"
    quoted = results[i_best if quote == "best" else i_last]
    return {
        "protocol": protocol.as_dict(),
        "protocol_text": protocol.describe(),
        "dataset": dm.dataset,
        "split": split,
        "num_images": num_images,
        "device": str(device),
        "processes": ranks.world_size,
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
