"""Judging a set of pseudo labels (or refined labels, or predictions) against the masks of a split.

A label set is a folder with one index PNG per image id (``<id>.png``: 0 background, c + 1 class c,
255 void; data without a background class: c = class c), or an export folder holding it as ``labels/``
(and the CAMs as ``cams/``). For one label set, or two side by side, ``audit`` writes into ``out_dir``:

    audit.json       per class name and "mean": iou, precision, recall, fp, fn (the reference's
                     (P-TP)/U and (T-TP)/U), their background / other-class split, coverage
                     (share of the class's true pixels not void), under both void conventions:
                     "excluded" (void pixels not scored, the usual protocol) and "as_background";
                     the CAM background-threshold curve; per-image extremes
    summary.md       the same for a person; per_image.csv: iou, coverage, classes of every image
    examples.png     best and worst images: image | ground truth | labels | CAM of the worst class
    cam_curve.png    CAM mIoU against the background score 0.00..0.60 (with exported CAMs)
    changes.png      with two sets: the images that gained and lost most

Data without a background class (``datamodule.has_background`` False): the "as_background" convention
and the CAM background-threshold curve have no meaning there and are left out (summary.md says so);
the fp/fn split has no background part (all "other class").

The per-image work (reading PNGs, masks, CAMs) is sharded over the processes of ``ranks``
(``utils.distributed``); the counts are summed, and the main process writes every file.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clustercam_pl.data.imageio import read_mask
from clustercam_pl.data.labels import class_offset, label_names
from clustercam_pl.inference.steps import IGNORE
from clustercam_pl.metrics import confusion_matrix, scores_from_confmat
from clustercam_pl.utils.distributed import Ranks
from clustercam_pl.utils.files import OutputFolder, atomic_write, natural_key, write_json, write_text
from clustercam_pl.utils.progress import CostMeter
from clustercam_pl.visualize import class_legend, figure, label_image

log = logging.getLogger("clustercam_pl.audit")

THRESHOLDS = tuple(round(0.01 * i, 2) for i in range(61))  # CAM background scores 0.00..0.60
CONVENTIONS = ("excluded", "as_background")
METRICS = ("iou", "precision", "recall", "fp", "fn", "fp_bg", "fp_other", "fn_bg", "fn_other", "coverage")


# ------------------------------------------------------------------------------------ label sets
def label_dir(folder: str | Path) -> Path:
    """The folder of ``<id>.png`` files of a label set: ``<folder>/labels`` for an export folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"label folder {folder} does not exist; pass labels=<an export or refine out_dir>")
    return folder / "labels" if (folder / "labels").is_dir() else folder


def cam_dir(folder: str | Path) -> Path | None:
    """The exported CAMs of a label set: ``<folder>/cams``, or those of the folder it was refined from."""
    folder = Path(folder)
    if (folder / "cams").is_dir():
        return folder / "cams"
    meta = folder / "meta.json"
    if meta.is_file():
        source = json.loads(meta.read_text()).get("labels")
        if source and Path(source) != folder and (Path(source) / "cams").is_dir():
            return Path(source) / "cams"
    return None


def label_ids(folder: Path) -> list[str]:
    """Image ids of the PNGs under ``folder`` (ids of folder datasets are paths: train/cat/001)."""
    return sorted((str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*.png")
                   if not p.name.startswith(".")), key=natural_key)


def recorded_split(folder: str | Path) -> str | None:
    """The split an export or refine folder records in its meta.json (None without one)."""
    meta = Path(folder) / "meta.json"
    return json.loads(meta.read_text()).get("split") if meta.is_file() else None


class RawTransform:
    """The dataset transform that keeps pixels as they are: (N, H, W) float 0..255 and the mask."""

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None) -> dict[str, Any]:
        return {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), "mask": mask}


def raw_dataset(datamodule: Any, split: str) -> Any:
    """The split's eval dataset returning raw uint8 pixels (see :func:`item_arrays`), not normalised ones."""
    dataset = copy.copy(datamodule.eval_dataset(split))
    dataset.transform = RawTransform()
    return dataset


def item_arrays(item: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, 3) uint8 image and (H, W) uint8 mask (None without one) of a raw dataset item; of an N-band
    image (aerial RGB-IR) the first 3 bands, the colour image the figures and refinement steps take."""
    image = item["image"][:3].permute(1, 2, 0).numpy().round().astype(np.uint8)
    mask = item.get("mask")
    return image, None if mask is None else np.asarray(mask).astype(np.uint8)


def dataset_index(dataset: Any) -> dict[str, int]:
    """Image id -> item index (listed ids where the dataset has them, else read item by item)."""
    ids = getattr(dataset, "ids", None)
    if ids is None:
        ids = [dataset[i]["image_id"] for i in range(len(dataset))]
    return {str(i): n for n, i in enumerate(ids)}


# --------------------------------------------------------------------------------------- scoring
def void_confmat(labels: np.ndarray, mask: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C + 1) int64 counts, rows = mask class, columns = label class, the last column = void labels."""
    pred = torch.from_numpy(labels.astype(np.int64))
    pred = torch.where(pred == IGNORE, num_classes, pred)
    pred = pred.clamp_max(num_classes)  # a label index beyond the classes counts as void
    cm = confusion_matrix(pred, torch.from_numpy(mask.astype(np.int64)), num_classes + 1)
    return cm[:num_classes].numpy()


def conventions(background: bool = True) -> tuple[str, ...]:
    """The void conventions that apply: both with a background class, "excluded" alone without one."""
    return CONVENTIONS if background else ("excluded",)


NO_BACKGROUND_NOTE = ("No background class: the 'as_background' void convention and the CAM background-score "
                      "curve do not apply and are left out; the fp/fn split has no background part.")


def convention(cm_void: np.ndarray, name: str) -> np.ndarray:
    """The (C, C) matrix of one void convention: void labels left out, or counted as background."""
    cm = cm_void[:, :-1].copy()
    if name == "as_background":
        cm[:, 0] += cm_void[:, -1]
    elif name != "excluded":
        raise ValueError(f"void convention {name!r} is not one of {CONVENTIONS}")
    return cm


def score_table(
    cm_void: np.ndarray, names: Sequence[str], background: bool = True
) -> dict[str, dict[str, dict[str, float]]]:
    """{convention: {class name | "mean": {metric: value in 0..1 (NaN: no score)}}} (the `conventions`
    of ``background``, the data's label convention).

    The mean of each metric is over the classes that have a value (as the mIoU); coverage is the
    share of each class's true pixels whose label is not void, and "mean" coverage that of all pixels.
    """
    truth = cm_void.sum(1).astype(np.float64)  # (C,)
    coverage = np.where(truth > 0, 1 - cm_void[:, -1] / np.maximum(truth, 1), np.nan)  # (C,)
    out = {}
    for conv in conventions(background):
        cm = torch.from_numpy(convention(cm_void, conv))
        scores = {k: v.numpy() for k, v in scores_from_confmat(cm, background).items()}
        scores["coverage"] = coverage
        table = {n: {k: _num(scores[k][c]) for k in METRICS} for c, n in enumerate(names)}
        mean = {k: _num(np.nanmean(scores[k])) if np.isfinite(scores[k]).any() else math.nan for k in METRICS}
        mean["coverage"] = _num(1 - cm_void[:, -1].sum() / max(truth.sum(), 1))
        out[conv] = table | {"mean": mean}
    return out


def _num(x: Any) -> float:
    x = float(x)
    return x if math.isfinite(x) else math.nan


def image_iou(cm: np.ndarray, background: bool = True) -> tuple[float, int]:
    """Mean IoU of one image over the classes in its mask or labels, and the label value of its worst
    class (not background) among those in the mask (those in the labels when the mask has none;
    ``class_offset(background) - 1`` (0 with background, -1 without): no class at all)."""
    first = class_offset(background)  # the label value of class 0
    none = first - 1
    iou = scores_from_confmat(torch.from_numpy(cm))["iou"].numpy()  # (C,)
    if not np.isfinite(iou).any():
        return math.nan, none
    in_mask = cm.sum(1)[first:] > 0  # (K,)
    fg = np.where(np.isfinite(iou[first:]) & (in_mask if in_mask.any() else True), iou[first:], np.inf)
    worst = int(fg.argmin()) + first if np.isfinite(fg).any() else none
    return float(np.nanmean(iou)), worst


def read_cams(path: Path, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(n, H, W) float32 CAMs of an exported npz at image size (bilinear), and their 0-based classes."""
    with np.load(path) as z:
        cams, classes = np.asarray(z["cams"], dtype=np.float32), np.asarray(z["classes"], dtype=np.int64)
    if cams.shape[0] == 0:
        return np.zeros((0, *size), np.float32), classes
    up = F.interpolate(torch.from_numpy(cams)[None], size=size, mode="bilinear", align_corners=False)[0]
    return up.numpy(), classes  # (n, H, W)


def cam_curve_counts(cams: np.ndarray, classes: np.ndarray, mask: np.ndarray, num_classes: int) -> np.ndarray:
    """(len(THRESHOLDS), C, C) confusion matrices of the CAM label (background where no CAM exceeds t).

    One pass: a pixel is foreground for the thresholds below its best score, so the counts per
    (number of such thresholds, truth, class) summed from the top give every threshold's matrix.
    """
    C, n = num_classes, len(THRESHOLDS)
    valid = mask.ravel() < C  # (HW,) void truth is not scored
    target = mask.ravel()[valid].astype(np.int64)
    if cams.shape[0]:
        top = cams.max(0).ravel()[valid]  # (V,) best score
        arg = (classes[cams.argmax(0)] + 1).ravel()[valid]  # (V,) its class + 1
    else:
        top, arg = np.full(target.shape, -np.inf, np.float32), np.zeros(target.shape, np.int64)
    # (V,) thresholds strictly below the score, compared in the CAMs' dtype as cam_prediction does
    below = np.searchsorted(np.asarray(THRESHOLDS, dtype=top.dtype), top, side="left")
    hist = np.bincount((below * C + target) * C + arg, minlength=(n + 1) * C * C).reshape(n + 1, C, C)
    fg = np.cumsum(hist[::-1], axis=0)[::-1][1:]  # (n, C, C): [i] = pixels with more than i thresholds below
    out = fg.copy()
    out[:, :, 0] = 0
    out[:, :, 0] = np.bincount(target, minlength=C)[None] - out.sum(2)  # the rest is background
    return out


def audit_share(
    ranks: Ranks, dataset: Any, index: dict[str, int], ids: Sequence[str], sets: Sequence[Path],
    cams: Path | None, num_classes: int, background: bool = True,
) -> tuple[list[dict[str, Any]], list[np.ndarray], np.ndarray | None]:
    """This process's images: per-image records, the summed (C, C + 1) matrix of each set, the CAM curve
    counts (None without ``cams``). ``num_classes``: C, the number of label values."""
    C, first = num_classes, class_offset(background)
    totals = [np.zeros((C, C + 1), np.int64) for _ in sets]
    curve = np.zeros((len(THRESHOLDS), C, C), np.int64) if cams is not None else None
    records = []
    mine = ranks.shard(list(ids))
    meter = CostMeter(len(mine), "audit", enabled=ranks.is_main)
    for image_id in mine:
        _, mask = item_arrays(dataset[index[image_id]])
        if mask is None:
            raise ValueError(f"image {image_id} has no mask: the audit needs a split with masks")
        rec: dict[str, Any] = {"id": image_id, "classes": [int(c) for c in np.unique(mask) if first <= c < C]}
        for s, folder in enumerate(sets):
            labels = read_mask(folder / f"{image_id}.png")
            if labels.shape != mask.shape:
                raise ValueError(f"{folder / (image_id + '.png')} is {labels.shape}, its mask is {mask.shape}")
            cm = void_confmat(labels, mask, C)
            totals[s] += cm
            iou, worst = image_iou(convention(cm, "excluded"), background)
            rec[f"iou_{s}"], rec[f"worst_{s}"] = iou, worst
            rec[f"coverage_{s}"] = float(1 - cm[:, -1].sum() / max(cm.sum(), 1))
        if curve is not None:
            npz = cams / f"{image_id}.npz"
            if not npz.is_file():
                raise FileNotFoundError(f"{npz} is missing: the CAM curve needs every image's CAMs "
                                        "(or pass cams=false)")
            curve += cam_curve_counts(*read_cams(npz, mask.shape), mask, C)
        records.append(rec)
        meter.update(1)
    meter.close()
    return records, totals, curve


def curve_summary(curve: np.ndarray) -> dict[str, Any]:
    """CAM mIoU at each background threshold, and the best threshold."""
    mious = [_num(scores_from_confmat(torch.from_numpy(cm))["iou"].nanmean()) for cm in curve]
    best = int(np.nanargmax(mious))
    return {"thresholds": list(THRESHOLDS), "miou": mious, "best_threshold": THRESHOLDS[best], "best_miou": mious[best]}


# ------------------------------------------------------------------------------------- pictures
def _save_figure(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    with atomic_write(path) as f:
        f.write(buf.getvalue())
    return path


def contact_sheet(
    rows: Sequence[tuple[str, str]], dataset: Any, index: dict[str, int], sets: Sequence[Path],
    set_names: Sequence[str], cams: Path | None, worst: dict[str, int], names: Sequence[str], path: Path,
    background: bool = True,
) -> Path:
    """One row per (image id, caption): image | ground truth | each label set | CAM of the worst class.
    ``names`` are the label values' (`label_names`), ``worst`` the label value of each image's worst class."""
    first = class_offset(background)
    cols = 2 + len(sets) + (cams is not None)
    fig = figure(1.9 * cols, 1.9 * len(rows) + 0.8, dpi=80)
    for r, (image_id, caption) in enumerate(rows):
        image, mask = item_arrays(dataset[index[image_id]])
        panels = [("image", image), ("ground truth", label_image(mask, background))]
        panels += [(n, label_image(read_mask(s / f"{image_id}.png"), background))
                   for n, s in zip(set_names, sets, strict=True)]
        if cams is not None:
            maps, classes = read_cams(cams / f"{image_id}.npz", mask.shape)
            c = worst.get(image_id, -1) - first  # its class index; < 0: none
            hit = np.nonzero(classes == c)[0]
            cam = maps[hit[0]] if len(hit) else np.zeros(mask.shape, np.float32)
            panels.append((f"CAM {names[c + first] if c >= 0 else '-'}", cam))
        for k, (title, arr) in enumerate(panels):
            ax = fig.add_subplot(len(rows), cols, r * cols + k + 1)
            ax.imshow(arr, cmap="jet" if arr.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(title if k else f"{caption}\n{image_id}", fontsize=7)
            ax.axis("off")
    class_legend(fig, list(names[first:]), background)
    height = 1.9 * len(rows) + 0.8
    fig.subplots_adjust(left=0.02, right=0.98, top=1 - 0.35 / height, bottom=0.8 / height, hspace=0.3, wspace=0.05)
    return _save_figure(fig, path)


def curve_figure(curve: dict[str, Any], path: Path) -> Path:
    fig = figure(4.5, 3.2)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(curve["thresholds"], [100 * m for m in curve["miou"]])
    ax.axvline(curve["best_threshold"], ls="--", c="gray")
    ax.set_xlabel("background score")
    ax.set_ylabel("CAM mIoU (%)")
    ax.set_title(f"best {100 * curve['best_miou']:.1f} at {curve['best_threshold']:.2f}", fontsize=9)
    fig.tight_layout()
    return _save_figure(fig, path)


# -------------------------------------------------------------------------------------- reports
def per_image_csv(records: Sequence[dict[str, Any]], n_sets: int, names: Sequence[str]) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["id", "classes", *[f"{k}_{s}" for s in range(n_sets) for k in ("iou", "coverage")]])
    for r in records:
        w.writerow([r["id"], " ".join(names[c] for c in r["classes"]),
                    *[f"{r[f'{k}_{s}']:.4f}" for s in range(n_sets) for k in ("iou", "coverage")]])
    return out.getvalue()


def _pct(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{100 * x:.1f}"


def markdown(report: dict[str, Any], names: Sequence[str]) -> str:
    """The audit for a person: mean and per-class tables (void excluded), the other convention's mean."""
    sets = report["sets"]
    lines = [f"# Label audit: {report['dataset']} {report['split']}, {report['num_images']} images", ""]
    lines += [f"- set {s}: `{p}`" for s, p in enumerate(report["labels"])]
    if "note" in report:
        lines += ["", report["note"]]
    for conv in (c for c in CONVENTIONS if c in sets[0]):
        lines += ["", f"## Mean over classes, void {conv.replace('_', ' ')} (%)", "",
                  "| set | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
        for s, table in enumerate(sets):
            lines.append(f"| {s} | " + " | ".join(_pct(table[conv]["mean"][k]) for k in METRICS) + " |")
        if len(sets) == 2:
            lines.append("| delta | " + " | ".join(_pct(report["delta"][conv]["mean"][k]) for k in METRICS) + " |")
    keys = ("iou", "precision", "recall", "fp", "fn", "coverage")
    lines += ["", "## Per class, void excluded (%)", "",
              "| class | " + " | ".join(f"{k} {s}" for k in keys for s in range(len(sets))) + " |",
              "|---" * (1 + len(keys) * len(sets)) + "|"]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(_pct(sets[s]["excluded"][n][k]) for k in keys for s in range(len(sets)))
                     + " |")
    if "cam_curve" in report:
        c = report["cam_curve"]
        lines += ["", f"CAM mIoU {_pct(c['best_miou'])} at the best background score {c['best_threshold']:.2f} "
                  "(`cam_curve.png`)."]
    lines += ["", "Worst images (set 0): " + ", ".join(f"{i} ({_pct(v)})" for i, v in report["worst"]),
              "", "Best images (set 0): " + ", ".join(f"{i} ({_pct(v)})" for i, v in report["best"])]
    if "changes" in report:
        ch = report["changes"]
        lines += ["", "Gained most (set 1 - set 0): " + ", ".join(f"{i} ({_pct(v)})" for i, v in ch["gained"]),
                  "", "Lost most: " + ", ".join(f"{i} ({_pct(v)})" for i, v in ch["lost"])]
    lines += ["", "Pictures: `examples.png`" + (", `changes.png`" if "changes" in report else "")
              + (", `cam_curve.png`" if "cam_curve" in report else ""), ""]
    return "\n".join(lines)


def _delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """b - a, key by key, for nested score tables."""
    return {k: _delta(a[k], b[k]) if isinstance(a[k], dict) else b[k] - a[k] for k in a}


# ------------------------------------------------------------------------------------------- run
def audit(
    datamodule: Any,
    split: str,
    labels: str | Path,
    out_dir: str | Path,
    against: str | Path | None = None,
    n_examples: int = 4,
    use_cams: bool = True,
    limit: int | None = None,
    overwrite: bool = False,
    ranks: Ranks | None = None,
) -> dict[str, Any]:
    """Audit the label set ``labels`` (set 0), and ``against`` (set 1) beside it, on ``split``; write the
    files listed in the module docstring to ``out_dir`` and return the report (audit.json's content).

    ``datamodule`` is a ``WSSSDataModule`` whose ``split`` has masks. Images are those with a PNG in
    every set (an image without labels is left out, and counted in ``missing``).
    """
    ranks = ranks or Ranks()
    folders = [Path(labels)] + ([Path(against)] if against else [])
    sets = [label_dir(f) for f in folders]
    background = bool(getattr(datamodule, "has_background", True))  # a data module that does not say: VOC-like
    cams = cam_dir(folders[0]) if use_cams else None
    names = label_names(datamodule.class_names, background)
    dataset = raw_dataset(datamodule, split)
    if not getattr(dataset, "with_mask", False):
        raise ValueError(f"split {split!r} of data={datamodule.dataset} has no masks: "
                         "pass a split with masks (split=val)")
    index = dataset_index(dataset)
    have = set.intersection(*(set(label_ids(s)) for s in sets))
    ids = [i for i in index if i in have]
    if not ids:
        raise ValueError(f"no image of {datamodule.dataset} {split} has labels in {', '.join(map(str, sets))}: "
                         "pass the split the labels were made for (split=...)")
    ids = ids[: int(limit)] if limit else ids
    meta = {"labels": [str(f) for f in folders], "dataset": datamodule.dataset, "split": split,
            "use_cams": cams is not None, "limit": limit}
    with OutputFolder(out_dir, meta, command="audit", overwrite=overwrite).claim(ranks):
        curve_cams = cams if background else None  # no background score to sweep without a background class
        records, totals, curve = audit_share(ranks, dataset, index, ids, sets, curve_cams, len(names), background)
        records = sorted((r for part in ranks.gather(records) for r in part), key=lambda r: natural_key(r["id"]))
        totals = [ranks.sum(torch.from_numpy(t)).numpy() for t in totals]
        curve = ranks.sum(torch.from_numpy(curve)).numpy() if curve is not None else None
        report = _report(records, totals, curve, folders, datamodule, split, len(index) - len(ids), n_examples,
                         background)
        if ranks.is_main:
            _write(Path(out_dir), report, records, dataset, index, sets, cams, names, n_examples, background)
    return report


def _report(
    records: list[dict[str, Any]], totals: list[np.ndarray], curve: np.ndarray | None, folders: list[Path],
    dm: Any, split: str, missing: int, n: int, background: bool = True,
) -> dict[str, Any]:
    names = label_names(dm.class_names, background)
    sets = [score_table(t, names, background) for t in totals]
    ranked = sorted((r for r in records if math.isfinite(r["iou_0"])), key=lambda r: r["iou_0"])
    report: dict[str, Any] = {
        "dataset": dm.dataset, "split": split, "num_images": len(records), "missing": missing,
        "labels": [str(f) for f in folders], "sets": sets,
        "worst": [(r["id"], r["iou_0"]) for r in ranked[:n]],
        "best": [(r["id"], r["iou_0"]) for r in ranked[n:][::-1][:n]],  # never the same image twice
    }
    if not background:
        report["note"] = NO_BACKGROUND_NOTE
    if len(sets) == 2:
        report["delta"] = _delta(sets[0], sets[1])
        both = sorted((r for r in ranked if math.isfinite(r["iou_1"])), key=lambda r: r["iou_1"] - r["iou_0"])
        delta = [(r["id"], r["iou_1"] - r["iou_0"]) for r in both]
        report["changes"] = {"gained": [d for d in delta[::-1][:n] if d[1] > 0],
                             "lost": [d for d in delta[:n] if d[1] < 0]}
    if curve is not None:
        report["cam_curve"] = curve_summary(curve)
    return report


def _write(
    out: Path, report: dict[str, Any], records: list[dict[str, Any]], dataset: Any, index: dict[str, int],
    sets: list[Path], cams: Path | None, names: Sequence[str], n: int, background: bool = True,
) -> None:
    set_names = ["labels"] if len(sets) == 1 else ["labels (0)", "against (1)"]
    worst = {r["id"]: r["worst_0"] for r in records}
    rows = [(i, f"worst {100 * v:.0f}") for i, v in report["worst"]]
    rows += [(i, f"best {100 * v:.0f}") for i, v in report["best"]]
    contact_sheet(rows, dataset, index, sets, set_names, cams, worst, names, out / "examples.png", background)
    if report.get("changes", {}).get("gained") or report.get("changes", {}).get("lost"):
        ch = report["changes"]
        rows = [(i, f"gained {100 * d:+.0f}") for i, d in ch["gained"]]
        rows += [(i, f"lost {100 * d:+.0f}") for i, d in ch["lost"]]
        contact_sheet(rows, dataset, index, sets, set_names, cams, worst, names, out / "changes.png", background)
    if "cam_curve" in report:
        write_json(out / "cam_curve.json", report["cam_curve"])
        curve_figure(report["cam_curve"], out / "cam_curve.png")
    write_text(out / "per_image.csv", per_image_csv(records, len(sets), names))
    write_text(out / "summary.md", markdown(report, names))
    write_json(out / "audit.json", report)
    log.info("audit of %d images written to %s", len(records), out)
