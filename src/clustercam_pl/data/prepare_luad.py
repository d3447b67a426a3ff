"""Prepare LUAD-HistoSeg as released: ``python -m clustercam_pl.prepare luad --luad-root LUAD-HistoSeg --out DIR``.

Input (the release, unpacked; its Readme, and ChuHan89/WSSS-Tissue ``tool/GenDataset.py``)::

    train/1031280-2300-27920-[1 0 0 1].png   16,678 patches; tag digits TE, NEC, LYM, TAS (``training/`` too)
    val/img/385277-44539-46781.png           300 patches, and val/mask/<same name>.png: palette PNG,
    test/img/..., test/mask/...              307; index 0..3 = the classes, 4 = white background / excluded

Output: the prepared layout of :func:`clustercam_pl.data.prepare_folder.prepare_release` (dataset ``luad``,
masks with class c as value c and void as 255), with every check of ``prepare folder``.
"""

from __future__ import annotations

import argparse
from typing import Any

from clustercam_pl.data.labels import RELEASE_VOID
from clustercam_pl.data.name_tags import NAMED_FORMS
from clustercam_pl.data.prepare_folder import Release, add_release_arguments, run_release

RELEASE = Release("luad", NAMED_FORMS["luad"], void=(RELEASE_VOID,))

HELP = "LUAD-HistoSeg as released (labels in the file names, palette masks with void 4)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m clustercam_pl.prepare luad`` (the shared ones are added by the command)."""
    add_release_arguments(p, RELEASE)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """``prepare luad`` with parsed arguments."""
    return run_release(RELEASE, args)
