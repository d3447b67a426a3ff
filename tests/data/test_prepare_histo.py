"""`prepare luad` / `prepare bcss` on stand-ins of the releases in their exact formats (tags in the file
names, palette masks with index 4), the refusals, and `prepare folder --labels-from-name`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from wsss_fakes import HISTO_TAGS, histo_name, make_histo_release, write_histo_mask

from clustercam_pl.data.datamodule import WSSSDataModule
from clustercam_pl.data.imageio import read_mask
from clustercam_pl.data.labels import BCSS_CLASSES, IGNORE_INDEX, LUAD_CLASSES, read_label_file
from clustercam_pl.data.layout import read_image_files, read_manifest
from clustercam_pl.data.name_tags import LAST_BRACKETS, NameTagError, name_tags, parse_name_tag
from clustercam_pl.data.prepare_common import REPORT_NAME, PrepareError
from clustercam_pl.data.registry import dataset_kind
from clustercam_pl.prepare import cli, main

CLASSES = {"luad": LUAD_CLASSES, "bcss": BCSS_CLASSES}


def problem_lines(e: pytest.ExceptionInfo) -> list[str]:
    """The problem lines of a refusal (between its header and its advice)."""
    lines = str(e.value).splitlines()
    assert lines[0].endswith("bad item(s):") and lines[-1].startswith("Fix them, or rerun with --skip-bad")
    return [line.strip() for line in lines[1:-1]]


# ----------------------------------------------------------------------------------------- name tags
@pytest.mark.parametrize(
    ("spec", "stem", "present"),
    [  # the releases' Readme examples
        ("luad", "1031280-2300-27920-[1 0 0 1]", [0, 3]),
        ("bcss", "TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500+0[1101]", [0, 1, 3]),
        ("bcss", "TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500+[1101]", [0, 1, 3]),  # a readme's variant
        ("luad", "a-[0, 1, 0, 0]", [1]),  # commas between the digits, as in WSSS4LUAD's names
        (r"_cls([01]+)$", "scan_7_cls0110", [1, 2]),
        ("luad", "x-[0 0 0 0]", []),  # a tag with no class: a negative
    ],
)
def test_a_tag_gives_the_classes_its_digits_mark(spec, stem, present) -> None:
    assert parse_name_tag(name_tags(spec), stem, ("a", "b", "c", "d")) == present


@pytest.mark.parametrize(
    ("stem", "message"),
    [
        ("1031280-2300-27920", "file name '1031280-2300-27920' has no label tag: the pattern "
         f"{LAST_BRACKETS!r} (luad) does not find one. A tagged name looks like '1031280-2300-27920-[1 0 0 1].png'"
         "; move it"),
        ("x-[1 0 1]", "file name 'x-[1 0 1]': tag '1 0 1' has 3 digit(s), the dataset has 4 classes "
         "(TE, NEC, LYM, TAS): one 0/1 digit per class, in this order; move it"),
        ("x-[1 0 2 1]", "file name 'x-[1 0 2 1]': tag '1 0 2 1' has '2'; a tag is one digit per class, 1 = present, "
         "0 = absent; move it"),
    ],
)
def test_a_bad_tag_is_refused_naming_the_file_and_the_pattern(stem, message) -> None:
    with pytest.raises(NameTagError) as e:
        parse_name_tag(name_tags("luad"), stem, LUAD_CLASSES, fix="move it")
    assert str(e.value) == message


@pytest.mark.parametrize(("spec", "says"), [("[01", "is not a regular expression"), (r"_\d+$", "has 0 groups"),
                                            (r"(a)(b)", "has 2 groups")])
def test_a_pattern_needs_one_group(spec, says) -> None:
    with pytest.raises(ValueError, match=says) as e:
        name_tags(spec)
    assert LAST_BRACKETS in str(e.value)  # a pattern that works, to paste


# ------------------------------------------------------------------------------------- the releases
@pytest.mark.parametrize("dataset", ["luad", "bcss"])
def test_a_release_is_prepared_as_published(dataset, tmp_path: Path) -> None:
    raw = make_histo_release(tmp_path / "raw", dataset)
    out = tmp_path / "out"
    main(raw.argv(out))
    manifest = read_manifest(out, dataset)
    assert manifest.classes == CLASSES[dataset] and manifest.has_background is False
    assert {s: i.num_images for s, i in manifest.splits.items()} == {"train": 8, "val": 2, "test": 2}
    assert {s: i.mask_dir is not None for s, i in manifest.splits.items()} == {"train": False, "val": True, "test": True}

    labels = read_label_file(out / "cls_labels.json", 4, CLASSES[dataset])
    assert {i: labels[i] for i in raw.train_labels} == raw.train_labels  # the tags, digit c = class c
    files = read_image_files(out / "image_files.json")
    for i, mask in raw.masks.items():
        assert labels[i] == sorted(set(np.unique(mask).tolist()) - {4})  # val/test: the classes of the mask
        stored = read_mask(out / "SegmentationClass" / f"{i}.png")  # (H, W)
        assert np.array_equal(stored, np.where(mask == 4, IGNORE_INDEX, mask))  # class c = c, void 4 -> 255
        assert files[i] == f"{i.split('/')[0]}/img/{i.split('/')[1]}.png"
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["dataset"] == dataset and "background" not in report["mask_pixel_fraction"]["val"]
    void = sum(int((m == 4).sum()) for i, m in raw.masks.items() if i.startswith("val/"))
    total = sum(m.size for i, m in raw.masks.items() if i.startswith("val/"))
    assert report["mask_pixel_fraction"]["val"]["ignored_of_all_pixels"] == pytest.approx(void / total)

    # The kind reads the root: training items carry the tag, evaluation items the mask with 255 for void.
    kind = dataset_kind(dataset)
    assert kind.has_background is False and kind.void_values == (4,)
    dm = WSSSDataModule(dataset=dataset, data_root=str(out), global_batch_size=4, val_batch_size=2, crop_size=32,
                        num_workers=0, pin_memory=False)
    dm.setup("fit")
    assert (dm.train_split, dm.val_split, len(dm.train_dataset), len(dm.val_dataset)) == ("train", "val", 8, 2)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["cls_label"].shape == (4, 4)
    for image_id, label in zip(batch["image_id"], batch["cls_label"], strict=True):
        assert torch.equal(label.nonzero().flatten(), torch.tensor(raw.train_labels[image_id]))
    val = next(iter(dm.val_dataloader()))
    for image_id, mask in zip(val["image_id"], val["mask"], strict=True):
        raw_mask = torch.from_numpy(raw.masks[image_id]).long()
        assert torch.equal(mask, torch.where(raw_mask == 4, IGNORE_INDEX, raw_mask))


def test_a_training_folder_named_training_and_a_rerun(tmp_path: Path) -> None:
    raw = make_histo_release(tmp_path / "raw", "luad", train_dir="training")
    out = tmp_path / "out"
    main(raw.argv(out))
    main(raw.argv(out))  # idempotent
    assert read_manifest(out, "luad").splits["train"].num_images == 8


def test_bad_items_are_refused_together_naming_file_and_fix_then_skipped(tmp_path: Path) -> None:
    raw = make_histo_release(tmp_path / "raw", "luad")
    train = raw.root / "train"
    untagged = train / "1031299-2300-27920.png"  # a file name without a tag
    Image.new("RGB", (32, 32)).save(untagged)
    three = train / "1031298-2300-27920-[1 0 1].png"  # a tag with 3 digits
    Image.new("RGB", (32, 32)).save(three)
    val_ids = sorted(i for i in raw.masks if i.startswith("val/"))
    unknown = raw.root / "val" / "mask" / f"{val_ids[0].split('/')[1]}.png"
    mask = raw.masks[val_ids[0]].copy()
    mask[0, :3] = (5, 9, 7)  # values of no class and not the void index
    write_histo_mask(unknown, mask, "luad")
    small = raw.root / "test" / "mask" / f"{histo_name('luad', 110, None)}.png"
    write_histo_mask(small, np.zeros((16, 32), np.uint8), "luad")  # image/mask size mismatch

    with pytest.raises(PrepareError) as e:
        main(raw.argv(tmp_path / "out"))
    fix = "move other files out of " + str(train)
    assert problem_lines(e) == [
        f"test/{histo_name('luad', 110, None)}: mask size 32x16 != image 32x32 "
        f"({raw.root / 'test' / 'img' / small.name}) [{small}]",
        "train/1031298-2300-27920-[1 0 1]: file name '1031298-2300-27920-[1 0 1]': tag '1 0 1' has 3 digit(s), the "
        "dataset has 4 classes (TE, NEC, LYM, TAS): one 0/1 digit per class, in this order; a training patch of the "
        f"luad release is named like '1031280-2300-27920-[1 0 0 1].png'; {fix} [{three}]",
        f"train/1031299-2300-27920: file name '1031299-2300-27920' has no label tag: the pattern {LAST_BRACKETS!r} "
        "(luad) does not find one. A tagged name looks like '1031280-2300-27920-[1 0 0 1].png'; a training patch of "
        f"the luad release is named like '1031280-2300-27920-[1 0 0 1].png'; {fix} [{untagged}]",
        f"{val_ids[0]}: mask values [5, 7, 9] outside 0..3 (the classes) and 4 (void) [{unknown}]",
    ]
    assert not (tmp_path / "out" / "clustercam_dataset.json").exists()

    main([*raw.argv(tmp_path / "out"), "--skip-bad"])
    manifest = read_manifest(tmp_path / "out", "luad")
    assert {s: i.num_images for s, i in manifest.splits.items()} == {"train": 8, "val": 1, "test": 1}
    skipped = json.loads((tmp_path / "out" / REPORT_NAME).read_text())["skipped"]
    assert [p["path"] for p in skipped] == [str(small), str(three), str(untagged), str(unknown)]


def test_missing_masks_are_refused_naming_where_they_belong(tmp_path: Path) -> None:
    raw = make_histo_release(tmp_path / "raw", "bcss")
    masks = sorted((raw.root / "test" / "mask").iterdir())
    for m in masks:  # a test split without any mask is not a split without masks: the release has them
        m.unlink()
    with pytest.raises(PrepareError) as e:
        main(raw.argv(tmp_path / "out"))
    assert problem_lines(e) == [
        f"test/{m.stem}: missing mask (other images of split 'test' have one: every image of a split needs a mask, "
        f"or none does) [{m}]" for m in masks
    ]


def test_a_folder_that_is_not_the_release_is_refused_with_the_layout(tmp_path: Path, capsys) -> None:
    raw = make_histo_release(tmp_path / "raw", "bcss")
    for f in (raw.root / "val" / "img").iterdir():
        f.unlink()
    (raw.root / "val" / "img").rmdir()
    assert cli(raw.argv(tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {raw.root / 'val' / 'img'} or {raw.root / 'valid' / 'img'} not found: "
                          "--bcss-root must be the unpacked bcss release, the folder holding val/ with img/ and mask/")


# ------------------------------------------------------------------------ prepare folder --labels-from-name
def test_folder_labels_from_name_agree_with_the_release(tmp_path: Path) -> None:
    """A user's own copy of a release in a folder of their layout (tagged training patches, untagged val
    patches with masks of void 4) through `prepare folder` gets the labels and masks `prepare luad` gives."""
    raw = make_histo_release(tmp_path / "raw", "luad")
    main(raw.argv(tmp_path / "luad"))
    own = tmp_path / "own"
    (own / "splits").mkdir(parents=True)
    for split, src in (("train", raw.root / "train"), ("val", raw.root / "val" / "img")):
        shutil.copytree(src, own / "images" / split)
        (own / "splits" / f"{split}.txt").write_text("".join(f"{split}/{f.name}\n" for f in sorted(src.iterdir())))
    shutil.copytree(raw.root / "val" / "mask", own / "masks" / "val")
    argv = ["folder", "--images", str(own / "images"), "--masks", str(own / "masks"), "--labels-from-name", "luad",
            "--splits", str(own / "splits"), "--out", str(tmp_path / "out"), "--workers", "0", "--no-progress"]
    with pytest.raises(PrepareError, match=r"^--void 4 is also the mask value of class 'TAS': give the value that "
                       r"marks only excluded pixels, or add --no-background if the masks have no background class$"):
        main([*argv, "--void", "4"])  # with a background class, value 4 is the fourth class
    main([*argv, "--no-background", "--void", "4"])

    manifest = read_manifest(tmp_path / "out", "folder")
    assert manifest.classes == LUAD_CLASSES and manifest.has_background is False  # the named form's classes
    labels = read_label_file(tmp_path / "out" / "cls_labels.json", 4, LUAD_CLASSES)
    release = read_label_file(tmp_path / "luad" / "cls_labels.json", 4, LUAD_CLASSES)
    assert labels == {i: v for i, v in release.items() if not i.startswith("test/")}  # ids: <split>/<stem> in both
    for i in raw.masks:
        if i.startswith("val/"):
            assert np.array_equal(read_mask(tmp_path / "out" / "SegmentationClass" / f"{i}.png"),
                                  read_mask(tmp_path / "luad" / "SegmentationClass" / f"{i}.png"))
    dm = WSSSDataModule(dataset="folder", data_root=str(tmp_path / "out"), global_batch_size=2, crop_size=32,
                        num_workers=0, pin_memory=False)
    assert dm.has_background is False and dm.class_names == LUAD_CLASSES


def test_folder_labels_from_a_regex_with_a_class_list(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    tags = {f"slide{n}_cls{''.join(map(str, t[:3]))}": [c for c in range(3) if t[c]] for n, t in enumerate(HISTO_TAGS)}
    for stem in tags:
        Image.new("RGB", (16, 16), (200, 10, 10)).save(images / f"{stem}.png")
    (tmp_path / "classes.txt").write_text("tumour\nstroma\nimmune\n")
    argv = ["folder", "--images", str(images), "--labels-from-name", r"_cls([01]+)$", "--val-fraction", "0.25",
            "--out", str(tmp_path / "out"), "--workers", "0", "--no-progress"]
    with pytest.raises(PrepareError, match=r"--labels-from-name '_cls\(\[01\]\+\)\$' needs --classes FILE"):
        main(argv)
    main([*argv, "--classes", str(tmp_path / "classes.txt")])
    assert read_label_file(tmp_path / "out" / "cls_labels.json", 3, ("tumour", "stroma", "immune")) == tags

    Image.new("RGB", (16, 16)).save(images / "slide9.png")  # no tag, no mask
    with pytest.raises(PrepareError) as e:
        main([*argv, "--classes", str(tmp_path / "classes.txt")])
    assert problem_lines(e) == [
        r"slide9: file name 'slide9' has no label tag: the pattern '_cls([01]+)$' does not find one; rename the "
        f"file, or give the labels in a CSV with --labels instead [{images / 'slide9.png'}]"
    ]
