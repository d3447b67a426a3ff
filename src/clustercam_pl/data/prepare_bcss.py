"""Prepare BCSS-WSSS as released: ``python -m clustercam_pl.prepare bcss --bcss-root BCSS-WSSS --out DIR``.

Input (the release, unpacked; its Readme, and ChuHan89/WSSS-Tissue ``tool/GenDataset.py``)::

    train/TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500+0[1101].png
                                             23,422 patches; tag digits TUM, STR, LYM, NEC (``training/`` too)
    val/img/<name>.png, val/mask/<name>.png  3,418 patches (``valid/`` too); palette PNG masks,
    test/img/..., test/mask/...              4,986; index 0..3 = the classes, 4 = white background / excluded

Output: the prepared layout of :func:`clustercam_pl.data.prepare_folder.prepare_release` (dataset ``bcss``,
masks with class c as value c and void as 255), with every check of ``prepare folder``.
"""

from __future__ import annotations

import argparse
from typing import Any

from clustercam_pl.data.labels import RELEASE_VOID
from clustercam_pl.data.name_tags import NAMED_FORMS
from clustercam_pl.data.prepare_folder import Release, add_release_arguments, run_release

RELEASE = Release("bcss", NAMED_FORMS["bcss"], void=(RELEASE_VOID,))

HELP = "BCSS-WSSS as released (labels in the file names, palette masks with void 4)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m clustercam_pl.prepare bcss`` (the shared ones are added by the command)."""
    add_release_arguments(p, RELEASE)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """``prepare bcss`` with parsed arguments."""
    return run_release(RELEASE, args)
