"""Refined copies of a label set: post-processing steps (superpixels, segments, SAM, SAM 2) applied
to every ``<id>.png`` of a label folder (an export's ``labels/``, or any folder of index PNGs).

    <out_dir>/labels/<id>.png        the refined labels (0 background, c + 1 class c, 255 void; data
                                     without a background class: c = class c)
    <out_dir>/meta.json              source folder, steps, dataset, split; a rerun with others is refused
    <out_dir>/refine_summary.json    images done, resumed, time, images/s

Resumable: every PNG is written atomically (``utils.files``), so an image is done when its PNG
exists; a rerun does the missing ones, whatever the number of processes. On N processes
(``utils.distributed``) each image belongs to one process's share. The images come from the split of
the data module (the steps look at the pixels); the labels' own folder gives only the labels.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from clustercam_pl.data.imageio import read_mask, write_index_png
from clustercam_pl.inference.steps import Sample, Step, run_steps, step_config
from clustercam_pl.tasks.audit import dataset_index, item_arrays, label_dir, label_ids, raw_dataset
from clustercam_pl.utils.distributed import Ranks
from clustercam_pl.utils.files import OutputFolder, file_sha256, write_json

log = logging.getLogger("clustercam_pl.refine")

META_FORMAT = 1
RUNTIME_KEYS = ("device",)  # step settings that do not change the output


def refine_meta(labels: Path, steps: Sequence[Step], dataset: str, split: str) -> dict[str, Any]:
    """What the outputs depend on: the source labels (and the export that made them), steps, images."""
    source_meta = labels / "meta.json"
    return {
        "format": META_FORMAT, "labels": str(labels), "dataset": dataset, "split": split,
        "labels_meta_sha256": file_sha256(source_meta) if source_meta.is_file() else None,
        "steps": [{k: v for k, v in step_config(s).items() if k not in RUNTIME_KEYS} for s in steps],
    }


def refine_labels(
    datamodule: Any,
    split: str,
    labels: str | Path,
    steps: Sequence[Step],
    out_dir: str | Path,
    limit: int | None = None,
    overwrite: bool = False,
    ranks: Ranks | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write (or complete) ``out_dir/labels`` with every label PNG of ``labels`` after ``steps``; return
    the summary (every process returns the same numbers)."""
    if not steps:
        raise ValueError("no refinement step given: pass postprocess=superpixel (or segments, sam, sam2)")
    ranks = ranks or Ranks()
    labels, out = Path(labels), Path(out_dir)
    source = label_dir(labels)
    if out.resolve() == labels.resolve() or out.resolve() == source.resolve():
        raise ValueError(f"out_dir={out} is the label folder itself: pass another out_dir=... "
                         "(the source stays as it is)")
    dataset = raw_dataset(datamodule, split)
    index = dataset_index(dataset)
    ids = label_ids(source)
    unknown = [i for i in ids if i not in index]
    if unknown:
        raise ValueError(f"{len(unknown)} label file(s) in {source} are not images of {datamodule.dataset} {split} "
                         f"(e.g. {unknown[0]}.png): pass the split they were made for (split=...)")
    if limit is not None:
        ids = ids[: int(limit)]
    meta = refine_meta(labels, steps, datamodule.dataset, split)
    with OutputFolder(out, meta, command="refine", overwrite=overwrite).claim(ranks):
        mine = ranks.shard(ids)
        todo = [i for i in mine if overwrite or not (out / "labels" / f"{i}.png").is_file()]
        n_todo = int(ranks.sum(torch.tensor(len(todo))))
        if ranks.is_main:
            log.info("%s %s: %d label maps, %d already refined, %d to do -> %s%s", datamodule.dataset, split,
                     len(ids), len(ids) - n_todo, n_todo, out,
                     f" ({ranks.world_size} processes)" if ranks.distributed else "")
        t0 = time.perf_counter()
        bar = tqdm(todo, unit="img", disable=not (progress and ranks.is_main), desc="refine", dynamic_ncols=True)
        for image_id in bar:
            image, _ = item_arrays(dataset[index[image_id]])
            sample = Sample(image=image, probs=None, labels=read_mask(source / f"{image_id}.png"), key=image_id,
                            background=datamodule.has_background)
            if sample.labels.shape != image.shape[:2]:
                raise ValueError(f"{source / image_id}.png is {sample.labels.shape}, its image {image.shape[:2]}")
            write_index_png(out / "labels" / f"{image_id}.png", run_steps(steps, sample),
                            background=datamodule.has_background)
        seconds = ranks.max(time.perf_counter() - t0)
        summary = {
            "labels": str(labels), "out_dir": str(out), "dataset": datamodule.dataset, "split": split,
            "steps": meta["steps"], "num_images": len(ids), "computed": n_todo, "resumed": len(ids) - n_todo,
            "seconds": round(seconds, 3),
            "images_per_s": round(n_todo / seconds, 3) if n_todo and seconds > 0 else None,
            "processes": ranks.world_size,
        }
        if ranks.is_main:
            write_json(out / "refine_summary.json", summary)
    return summary
