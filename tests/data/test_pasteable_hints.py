"""The overrides that data errors suggest work when pasted onto the command line (composed with Hydra)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from wsss_fakes import write_palette_png

from clustercam_pl.prepare import main as prepare
from helpers import compose_train

VOC = ["data=voc", "data.num_workers=0", "data.pin_memory=false", "data.crop_size=32", "data.global_batch_size=2"]


def _setup(tmp_path: Path, *overrides: str) -> None:
    instantiate(compose_train([*VOC, *overrides], output_dir=tmp_path).data).setup("fit")


def test_empty_label_hint_is_an_override(voc_tree, tmp_path: Path) -> None:
    write_palette_png(voc_tree.voc / "SegmentationClass" / "2007_000003.png",
                      np.zeros_like(voc_tree.masks["2007_000003"]))  # no class in the mask
    out = tmp_path / "voc"
    prepare(voc_tree.argv(out))
    root = [f"data.data_root={out}", "data.label_source=mask"]
    with pytest.raises(ValueError) as e:
        _setup(tmp_path, *root)
    assert str(e.value) == (
        f"label file {out / 'cls_labels_mask.json'}: 1 training image(s) have an empty label (no class present): "
        "2007_000003 (pass data.skip_unlabeled=true to drop them)"
    )
    hint = re.search(r"\(pass (\S+) to drop them\)", str(e.value)).group(1)
    _setup(tmp_path, *root, hint)


def test_missing_root_hint_is_an_override(voc_tree, tmp_path: Path) -> None:
    out = tmp_path / "voc"
    prepare(voc_tree.argv(out))
    with pytest.raises(FileNotFoundError) as e:
        _setup(tmp_path, f"data.data_root={tmp_path / 'nowhere'}")
    assert str(e.value) == (
        f"data.data_root={tmp_path / 'nowhere'} does not exist; prepare it with `python -m clustercam_pl.prepare voc "
        "--voc-root VOCdevkit/VOC2012 --sbd-root benchmark_RELEASE/dataset --out DATA_ROOT` and pass "
        "`data.data_root=DATA_ROOT`"
    )
    hint = re.search(r"and pass `(\S+)`$", str(e.value)).group(1)
    _setup(tmp_path, hint.replace("DATA_ROOT", str(out)))
