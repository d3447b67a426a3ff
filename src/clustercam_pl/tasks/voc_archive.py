"""The VOC evaluation server's archive, checked offline before it is uploaded.

The server (unreachable for weeks at a time) refuses an archive whose layout, ids, sizes or PNG
format are off, and says little about why. :func:`check_voc_archive` checks what it checks: every id
of the split list exactly once under ``results/VOC2012/Segmentation/<comp>_<split>_cls/``, each PNG
the size of its JPEG, indexed (mode P) with the VOC palette, values in 0..20. `eval export=true` runs
it on its own archive; ``python -m clustercam_pl.eval check_archive=<tar.gz> data=voc split=test``
runs it on any archive.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clustercam_pl.data.imageio import voc_palette

VOC_CLASSES = 21  # values 0..20
_MEMBER_RE = re.compile(r"^results/VOC2012/Segmentation/(?P<comp>comp\d+)_(?P<split>\w+)_cls/(?P<id>[^/].*)\.png$")
_SHOWN = 5  # problems of each kind named in the message


class ArchiveError(ValueError):
    """The archive would be refused by the server; the message lists every kind of problem found."""


def dataset_sizes(dataset: Any) -> Callable[[str], tuple[int, int]]:
    """(width, height) of an image of `dataset` by id, from its file's header (no decoding); the
    synthetic set's images are all `image_size` square."""
    if hasattr(dataset, "image_path"):
        def size(image_id: str) -> tuple[int, int]:
            with Image.open(dataset.image_path(image_id)) as im:
                return im.size
        return size
    side = int(dataset.config.image_size)
    return lambda image_id: (side, side)


def _png_problem(data: bytes, expected: tuple[int, int], palette: list[int]) -> str | None:
    """What is wrong with one PNG (None: nothing)."""
    with Image.open(io.BytesIO(data)) as im:
        if im.format != "PNG":
            return f"is {im.format}, not PNG"
        if im.mode != "P":
            return f"is mode {im.mode}, not an indexed (P) image with the VOC palette"
        if im.size != expected:
            return f"is {im.size[0]}x{im.size[1]}, its JPEG {expected[0]}x{expected[1]}"
        own = im.getpalette() or []
        if own[: 3 * VOC_CLASSES] != palette[: 3 * VOC_CLASSES]:
            return "has a palette other than VOC's"
        top = int(np.asarray(im).max(initial=0))
    return f"has value {top}, outside 0..{VOC_CLASSES - 1}" if top >= VOC_CLASSES else None


def check_voc_archive(
    archive: str | os.PathLike, ids: Sequence[str], sizes: Callable[[str], tuple[int, int]],
    split: str = "test",
) -> dict[str, Any]:
    """Check `archive` as the server would; ArchiveError naming every kind of problem, else a summary.

    `ids`: the split list's ids (VOC test: 1,456); `sizes(id)`: the (width, height) of its JPEG.
    """
    archive = Path(archive)
    if not archive.is_file():
        raise ArchiveError(f"{archive} does not exist: pass the .tar.gz that eval export=true wrote")
    problems: dict[str, list[str]] = {}

    def add(kind: str, what: str) -> None:
        problems.setdefault(kind, []).append(what)

    palette, found, comps = voc_palette(), set(), set()
    expected = set(ids)
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                m = _MEMBER_RE.match(member.name)
                if m is None or m["split"] != split:
                    add("outside the server's layout "
                        f"results/VOC2012/Segmentation/<comp>_{split}_cls/<id>.png", member.name)
                    continue
                comps.add(m["comp"])
                image_id = m["id"]
                if image_id not in expected:
                    add("not in the split list", image_id)
                    continue
                found.add(image_id)
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                try:
                    problem = _png_problem(data, sizes(image_id), palette)
                except OSError as e:
                    problem = f"does not read as an image ({e})"
                if problem:
                    add("wrong PNG", f"{image_id} {problem}")
    except tarfile.TarError as e:
        raise ArchiveError(f"{archive} is not a readable tar archive ({e}); re-run eval export=true") from e
    missing = [i for i in ids if i not in found]
    if missing:
        problems["missing ids"] = missing
    if len(comps) > 1:
        add("several competitions in one archive", ", ".join(sorted(comps)))
    if problems:
        lines = [f"{archive} would be refused by the VOC server ({len(ids)} ids expected, {len(found)} found):"]
        for kind, items in problems.items():
            more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
            lines.append(f"  {len(items)} {kind}: {', '.join(items[:_SHOWN])}{more}")
        lines.append("Fix: re-run `python -m clustercam_pl.eval ckpt_path=... split=test export=true` on the "
                     "whole split (no limit), and upload the archive it writes")
        raise ArchiveError("\n".join(lines))
    return {"archive": str(archive), "images": len(found), "competition": next(iter(comps), None),
            "split": split, "ok": True}


def check_archive_of_split(archive: str | os.PathLike, datamodule: Any, split: str) -> dict[str, Any]:
    """`check_voc_archive` against the split list and image files of `datamodule` (a `WSSSDataModule`)."""
    from clustercam_pl.tasks.export_labels import dataset_ids

    dataset = datamodule.eval_dataset(split)
    return check_voc_archive(archive, dataset_ids(dataset), dataset_sizes(dataset), split)
