"""Fixtures: fake VOC / SBD / COCO trees (see wsss_fakes.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from wsss_fakes import COCOTree, VOCTree, make_coco_tree, make_voc_tree


@pytest.fixture
def voc_tree(tmp_path: Path) -> VOCTree:
    return make_voc_tree(tmp_path / "raw")


@pytest.fixture
def coco_tree(tmp_path: Path) -> COCOTree:
    return make_coco_tree(tmp_path / "coco_raw")
