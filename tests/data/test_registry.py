"""The registry of dataset kinds: a kind is its dataset class; nothing else names a dataset."""

from __future__ import annotations

from typing import ClassVar

import pytest
from omegaconf import OmegaConf

from clustercam_pl.data import registry
from clustercam_pl.data.bcss import BCSSSegmentation
from clustercam_pl.data.coco import COCOSegmentation
from clustercam_pl.data.datamodule import WSSSDataModule
from clustercam_pl.data.folder import FolderSegmentation
from clustercam_pl.data.labels import BCSS_CLASSES, COCO_CLASSES, IGNORE_INDEX, LUAD_CLASSES, VOC_CLASSES
from clustercam_pl.data.layout import prepare_hint
from clustercam_pl.data.luad import LUADSegmentation
from clustercam_pl.data.potsdam import PotsdamSegmentation
from clustercam_pl.data.registry import DEFAULT_CROP, dataset_kind, dataset_names, prepare_steps
from clustercam_pl.data.synthetic import SyntheticWSSS, class_names
from clustercam_pl.data.vaihingen import VaihingenSegmentation
from clustercam_pl.data.voc import VOCSegmentation
from clustercam_pl.entry import _training_side
from clustercam_pl.prepare import _parser


def test_the_kinds_and_their_facts() -> None:
    assert dataset_names() == ["bcss", "coco", "folder", "luad", "potsdam", "synthetic", "vaihingen", "voc"]
    kinds = {n: dataset_kind(n) for n in dataset_names()}
    assert kinds == {"bcss": BCSSSegmentation, "coco": COCOSegmentation, "folder": FolderSegmentation,
                     "luad": LUADSegmentation, "potsdam": PotsdamSegmentation, "synthetic": SyntheticWSSS,
                     "vaihingen": VaihingenSegmentation, "voc": VOCSegmentation}
    assert {n: k.default_splits for n, k in kinds.items()} == {
        "bcss": ("train", "val"), "coco": ("train", "val"), "folder": ("train", "val"), "luad": ("train", "val"),
        "potsdam": ("train", "val"), "synthetic": ("train", "val"), "vaihingen": ("train", "val"),
        "voc": ("train_aug", "val")}
    assert (VOCSegmentation.fixed_classes, COCOSegmentation.fixed_classes) == (VOC_CLASSES, COCO_CLASSES)
    assert (LUADSegmentation.fixed_classes, BCSSSegmentation.fixed_classes) == (LUAD_CLASSES, BCSS_CLASSES)
    assert FolderSegmentation.fixed_classes is None and SyntheticWSSS.fixed_classes is None
    assert {n: k.default_negatives for n, k in kinds.items()} == {
        "bcss": "error", "coco": "error", "folder": "keep", "luad": "error", "potsdam": "error", "synthetic": "error",
        "vaihingen": "error", "voc": "error"}
    # The photo kinds: RGB, 255 void, a background class (a folder root's manifest says: has_background None).
    # The histopathology releases: no background class, void index 4 in their raw masks (255 once prepared).
    # ISPRS aerial patches: RGB-IR (Potsdam) or IRRG (Vaihingen), 5 classes and clutter void, no background.
    facts = {n: (k.has_background, k.void_values, k.in_channels) for n, k in kinds.items()}
    assert facts == {**{n: (True, (IGNORE_INDEX,), 3) for n in kinds}, "folder": (None, (IGNORE_INDEX,), 3),
                     "luad": (False, (4,), 3), "bcss": (False, (4,), 3),
                     "potsdam": (False, (IGNORE_INDEX,), 4), "vaihingen": (False, (IGNORE_INDEX,), 3)}
    assert SyntheticWSSS.prepare_example is None  # nothing to prepare: no data root needed
    for name in ("voc", "coco", "folder", "luad", "bcss"):
        assert f"`python -m clustercam_pl.prepare {name} " in prepare_hint(name)


def test_an_unknown_kind_lists_the_known_ones() -> None:
    with pytest.raises(ValueError) as e:
        dataset_kind("voc2007")
    assert str(e.value) == ("data.dataset must be one of ['bcss', 'coco', 'folder', 'luad', 'potsdam', 'synthetic', "
                            "'vaihingen', 'voc'], got 'voc2007'")
    assert prepare_hint("voc2007") == (
        "prepare it with `python -m clustercam_pl.prepare --help` and pass `data.data_root=DATA_ROOT`")


def test_a_new_kind_is_one_class_the_datamodule_and_the_config_checks_use(monkeypatch) -> None:
    monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))  # the test's kind stays in this test

    class Shapes(SyntheticWSSS):
        """A kind that differs from synthetic only in its facts."""

        name: ClassVar[str] = "shapes"
        default_splits: ClassVar[tuple[str, str]] = ("val", "test")
        default_negatives: ClassVar[str] = "keep"

    assert dataset_kind("shapes") is Shapes and "shapes" in dataset_names()
    dm = WSSSDataModule(dataset="shapes", global_batch_size=2, synthetic={"num_classes": 2, "num_val": 4})
    assert (dm.train_split, dm.val_split, dm.negatives) == ("val", "test", "keep")
    assert dm.class_names == class_names(2) and dm.crop_size == 64  # the kind's own options and crop
    dm.setup("fit")
    assert isinstance(dm.train_dataset, Shapes) and len(dm.train_dataset) == 4
    data = OmegaConf.create({"dataset": "shapes", "crop_size": None, "synthetic": {"image_size": 48}})
    assert _training_side(data) == ("data.synthetic.image_size", 48)

    with pytest.raises(TypeError, match="dataset kind 'shapes' is defined twice"):
        type("Other", (SyntheticWSSS,), {"name": "shapes"})


@pytest.mark.parametrize(
    ("data", "side"),
    [
        ({"dataset": "voc", "crop_size": None}, ("data.crop_size", DEFAULT_CROP)),
        ({"dataset": "folder", "crop_size": 64}, ("data.crop_size", 64)),
        ({"dataset": "coco", "crop_size": 448, "train_transform": "none"}, ("data.crop_size", None)),
        ({"dataset": "synthetic", "crop_size": None, "synthetic": {"image_size": 64}},
         ("data.synthetic.image_size", 64)),
        ({"dataset": "synthetic", "crop_size": 32, "train_transform": "plain"}, ("data.crop_size", 32)),
        ({"dataset": "synthetic", "crop_size": 32, "train_transform": "none", "synthetic": {}},
         ("data.synthetic.image_size", None)),
    ],
)
def test_training_side_is_a_fact_of_the_kind(data, side) -> None:
    assert _training_side(OmegaConf.create(data)) == side


def test_the_prepare_command_has_one_sub_command_per_prepare_step() -> None:
    steps = prepare_steps()
    assert sorted(steps) == ["bcss", "coco", "folder", "luad", "potsdam", "vaihingen", "voc"]
    sub = next(a for a in _parser()._actions if a.dest == "command")
    assert sorted(sub.choices) == ["bcss", "coco", "folder", "import-labels", "luad", "potsdam", "vaihingen", "voc"]
    for name, step in steps.items():  # each step's own options, and the shared ones, on its sub-command
        options = {o for a in sub.choices[name]._actions for o in a.option_strings}
        assert {"--out", "--skip-bad", "--workers", "--no-progress"} <= options
        assert f"--{name}-root" in options or "--images" in options
        assert {a.dest: a.help for a in sub._choices_actions}[name] == step.HELP
