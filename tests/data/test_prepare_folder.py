"""`python -m clustercam_pl.prepare folder`: the synthetic set written as a user's folder, then every check."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clustercam_pl.data.datamodule import WSSSDataModule
from clustercam_pl.data.imageio import read_mask
from clustercam_pl.data.labels import read_label_file
from clustercam_pl.data.layout import MANIFEST_NAME, read_manifest
from clustercam_pl.data.prepare_common import REPORT_NAME, PrepareError
from clustercam_pl.data.prepare_folder import split_by_class
from clustercam_pl.data.synthetic import SyntheticConfig, class_names, write_folder_dataset
from clustercam_pl.prepare import cli, main
from clustercam_pl.utils.files import partial_path

K3 = SyntheticConfig(num_classes=3, image_size=32, num_train=10, num_val=4, num_test=2)
NAMES = class_names(3)


@pytest.fixture
def raw(tmp_path: Path) -> dict[str, Path]:
    return write_folder_dataset(tmp_path / "raw", K3, negatives={"train": 2, "val": 1})


def argv(p: dict[str, Path], out: Path, *extra: str, masks: bool = True, classes: bool = True) -> list[str]:
    args = ["folder", "--images", str(p["images"]), "--labels", str(p["labels"]), "--out", str(out),
            "--workers", "0", "--no-progress"]
    if classes:
        args += ["--classes", str(p["classes"])]
    if masks:
        args += ["--masks", str(p["masks"])]
    if "--val-fraction" not in extra and "--splits" not in extra:
        args += ["--splits", str(p["splits"])]
    return [*args, *extra]


def line_of(path: Path, rel: str) -> int:
    """1-based line of the CSV row of image ``rel``."""
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if line.startswith(f"{rel},"))


def problem_lines(e: pytest.ExceptionInfo) -> list[str]:
    """The problem lines of a refusal from handle_problems (between its header and its advice)."""
    lines = str(e.value).splitlines()
    assert lines[0].endswith("bad item(s):") and lines[-1].startswith("Fix them, or rerun with --skip-bad")
    return [line.strip() for line in lines[1:-1]]


def _dm(root: Path, **kw) -> WSSSDataModule:
    args = dict(dataset="folder", data_root=str(root), global_batch_size=2, crop_size=32, num_workers=0)
    return WSSSDataModule(**{**args, **kw})


# ----------------------------------------------------------------------------------------- the layout
def test_prepared_folder_holds_the_synthetic_set(raw, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = main(argv(raw, out)) or json.loads((out / REPORT_NAME).read_text())
    manifest = read_manifest(out, "folder")
    assert manifest.classes == NAMES
    assert {s: i.num_images for s, i in manifest.splits.items()} == {"train": 12, "val": 5, "test": 2}
    assert report["images_per_split"] == {"train": 12, "val": 5, "test": 2}
    assert report["negatives_per_split"] == {"train": 2, "val": 1, "test": 0}
    assert report["splits_with_masks"] == ["train", "val", "test"]
    assert report["label_vs_mask_mismatches"] == {"train": 0, "val": 0, "test": 0}

    # Counts and pixel fractions recomputed here from the source masks.
    for split in ("train", "val"):
        rels = (raw["splits"] / f"{split}.txt").read_text().split()
        masks = [np.asarray(Image.open(raw["masks"] / r)) for r in rels]
        per_class = {n: sum(bool((m == c + 1).any()) for m in masks) for c, n in enumerate(NAMES)}
        assert report["images_per_class"][split] == per_class
        pixels = np.concatenate([m.ravel() for m in masks])
        frac = report["mask_pixel_fraction"][split]
        assert frac["background"] == pytest.approx(float((pixels == 0).mean()))
        for c, n in enumerate(NAMES):
            assert frac[n] == pytest.approx(float((pixels == c + 1).mean()))

    labels = read_label_file(out / "cls_labels.json", 3, NAMES)
    assert labels["train/negative_0000"] == [] and labels["val/negative_0000"] == []
    dm = _dm(out, val_batch_size=1)
    assert dm.num_classes == 3 and dm.class_names == NAMES  # before setup: from the manifest
    dm.setup("validate")
    seen = 0
    for batch in dm.val_dataloader():
        (i,) = batch["image_id"]
        src = np.asarray(Image.open(raw["masks"] / f"{i}.png"))
        np.testing.assert_array_equal(batch["mask"][0].numpy(), src)
        np.testing.assert_array_equal(read_mask(out / "SegmentationClass" / f"{i}.png"), src)
        present = [c for c in range(3) if (src == c + 1).any()]
        assert torch.nonzero(batch["cls_label"][0]).flatten().tolist() == present
        seen += 1
    assert seen == 5


def test_negatives_train_by_default_and_use_negatives_false_drops_them(raw, tmp_path: Path, caplog) -> None:
    out = tmp_path / "out"
    main(argv(raw, out))
    dm = _dm(out)
    dm.setup("fit")
    assert len(dm.train_dataset) == 12
    zero = dm.train_dataset.label_matrix().sum(1) == 0  # (N,)
    assert zero.sum() == 2
    for batch in dm.train_dataloader():
        assert batch["image"].shape[1:] == (3, 32, 32)
    with caplog.at_level(logging.INFO, logger="clustercam_pl.data.prepared"):
        dropped = _dm(out, use_negatives=False)
        dropped.setup("fit")
    assert len(dropped.train_dataset) == 10 and (dropped.train_dataset.label_matrix().sum(1) > 0).all()
    assert "split 'train': left out 2 negative image(s) (no class; negatives='drop')" in caplog.text
    assert len(dropped.val_dataset) == 5  # evaluation scores every image


def test_val_fraction_splits_per_class_without_overlap(tmp_path: Path) -> None:
    images = tmp_path / "images"
    rows = ["image,labels"]
    for i in range(40):  # 30 'common', 2 'rare' (one with 'common' too), 8 negatives
        rel = f"{'neg' if i >= 32 else 'pos'}/{i:03d}.jpg"
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i, 0, 0)).save(images / rel)
        names = "" if i >= 32 else ("rare;common" if i == 30 else "rare" if i == 31 else "common")
        rows.append(f"{rel},{names}")
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    common = ["folder", "--images", str(images), "--labels", str(labels), "--val-fraction", "0.2", "--seed", "3",
              "--workers", "0", "--no-progress"]
    report = main([*common, "--out", str(out)]) or json.loads((out / REPORT_NAME).read_text())
    train = (out / "splits/train.txt").read_text().split()
    val = (out / "splits/val.txt").read_text().split()
    assert not set(train) & set(val) and len(train) + len(val) == 40
    assert report["images_per_class"]["val"]["rare"] == 1 and report["images_per_class"]["train"]["rare"] == 1
    assert report["images_per_class"]["val"]["common"] in (6, 7)  # round(0.2 * 30) + maybe the rare image
    assert report["negatives_per_split"] == {"train": 6, "val": 2}
    again = tmp_path / "again"
    main([*common, "--out", str(again)])
    assert (again / "splits/val.txt").read_text() == (out / "splits/val.txt").read_text()  # seeded
    lab = {f"{i}": [0] for i in range(30)} | {f"n{i}": [] for i in range(10)}
    other_seeds = {tuple(split_by_class(lab, 1, 0.2, s)[1]) for s in range(5)}
    assert len(other_seeds) > 1  # the seed matters


def test_folders_json_and_csv_agree_with_mixed_suffixes_and_spaces(tmp_path: Path) -> None:
    images = tmp_path / "images"
    files = {"cat/a 1.jpg": "cat", "cat/sub/b.png": "cat", "dog/c.JPG": "dog", "dog/d.tif": "dog"}
    for n, rel in enumerate(files):
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (10 + n, 12), (n * 40, 0, 0)).save(images / rel, format="TIFF" if rel.endswith("tif") else None)
    (images / ".DS_Store").write_bytes(b"\0")  # hidden files are not images
    (tmp_path / "labels.json").write_text(json.dumps({rel: [c] for rel, c in files.items()}, indent=1))
    (tmp_path / "labels.csv").write_text("image,labels\n" + "".join(f"{r},{c}\n" for r, c in files.items()))
    results = {}
    for how, extra in {"folders": ["--labels-from-folders"], "json": ["--labels", str(tmp_path / "labels.json")],
                       "csv": ["--labels", str(tmp_path / "labels.csv")]}.items():
        out = tmp_path / how
        main(["folder", "--images", str(images), *extra, "--val-fraction", "0.5", "--out", str(out),
              "--workers", "0", "--no-progress"])
        results[how] = (out / "cls_labels.json").read_text().split('"labels"')[1]
        assert read_manifest(out, "folder").classes == ("cat", "dog")
    assert results["folders"] == results["json"] == results["csv"]
    files_json = json.loads((tmp_path / "csv" / "image_files.json").read_text())
    assert files_json == {"cat/a 1": "cat/a 1.jpg", "cat/sub/b": "cat/sub/b.png", "dog/c": "dog/c.JPG",
                          "dog/d": "dog/d.tif"}
    dm = _dm(tmp_path / "csv", global_batch_size=1, crop_size=16)
    dm.setup("fit")
    ids = list(dm.train_dataset.ids) + list(dm.val_dataset.ids)
    assert sorted(ids) == sorted(files_json)  # an id with a space survives the split list
    sizes = {dm.val_dataset[i]["image_id"]: tuple(dm.val_dataset[i]["image"].shape[1:]) for i in range(2)}
    for i, hw in sizes.items():
        w, h = Image.open(images / files_json[i]).size
        assert hw == (h, w)


def test_rerun_is_idempotent_and_a_refused_rerun_unprepares(raw, tmp_path: Path) -> None:
    out = tmp_path / "out"
    main(argv(raw, out))
    before = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    (out / "SegmentationClass/train/000000.png.part").write_bytes(b"half")  # an interrupted write (earlier naming)
    dead = partial_path(out / "SegmentationClass/train/000001.png", pid=2**22 + 1)  # above any pid_max
    dead.write_bytes(b"half")  # and one of a killed writer
    main([*argv(raw, out), "--workers", "2"])  # and the process-pool path gives the same files
    after = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert after == before
    (raw["images"] / "train/000004.png").write_bytes(b"broken")
    with pytest.raises(PrepareError):
        main(argv(raw, out))
    assert not (out / MANIFEST_NAME).exists()
    with pytest.raises(FileNotFoundError, match="is not a prepared folder root, or its preparation did not finish"):
        _ = _dm(out).num_classes


# ------------------------------------------------------------------------------ each check, its message
def test_unreadable_image(raw, tmp_path: Path) -> None:
    bad = raw["images"] / "train/000003.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(PrepareError) as e:
        main(argv(raw, tmp_path / "out"))
    assert problem_lines(e) == [f"train/000003: cannot read {bad}: cannot identify image file '{bad}'"]


def test_unknown_class(raw, tmp_path: Path) -> None:
    n = line_of(raw["labels"], "train/000001.png")
    lines = raw["labels"].read_text().splitlines()
    lines[n - 1] = "train/000001.png,disc/stripez;square/checker"
    raw["labels"].write_text("\n".join(lines) + "\n")
    with pytest.raises(PrepareError) as e:
        main(argv(raw, tmp_path / "out"))
    assert problem_lines(e) == [
        f"train/000001: {raw['labels']}:{n}: class 'disc/stripez' is not in {raw['classes']} (did you mean "
        "'disc/stripes'? it lists: disc/stripes, square/checker, triangle/dots)"
    ]


def test_row_without_image_image_without_row_and_duplicate_row(raw, tmp_path: Path) -> None:
    lab = raw["labels"]
    lines = lab.read_text().splitlines()
    first = line_of(lab, "train/000001.png")
    gone = line_of(lab, "train/000002.png")
    dup = lines[first - 1]
    lines = [line for n, line in enumerate(lines, 1) if n != gone] + ["train/999999.png,disc/stripes", dup]
    lab.write_text("\n".join(lines) + "\n")
    n_missing, n_dup = len(lines) - 1, len(lines)
    with pytest.raises(PrepareError) as e:
        main(argv(raw, tmp_path / "out", "--val-fraction", "0.3"))
    assert problem_lines(e) == [
        f"train/000001: {lab}:{n_dup}: second row for 'train/000001.png' (first at {lab}:{first})",
        f"train/000002: no row for it in {lab} (a negative image, with no class, is the row `train/000002.png,`) "
        f"[{raw['images'] / 'train/000002.png'}]",
        f"train/999999: {lab}:{n_missing}: 'train/999999.png' names no image file ({raw['images']})",
    ]


def test_mask_of_wrong_size_and_values_out_of_range(raw, tmp_path: Path) -> None:
    small = raw["masks"] / "val/000001.png"
    Image.fromarray(np.zeros((16, 20), np.uint8)).save(small)
    out_of_range = raw["masks"] / "val/000000.png"
    m = np.asarray(Image.open(out_of_range)).copy()
    m[0, :3] = [4, 7, 200]
    Image.fromarray(m).save(out_of_range)
    with pytest.raises(PrepareError) as e:
        main(argv(raw, tmp_path / "out"))
    assert problem_lines(e) == [
        f"val/000000: mask values [4, 7, 200] outside 0..3 and 255 [{out_of_range}]",
        f"val/000001: mask size 20x16 != image 32x32 ({raw['images'] / 'val/000001.png'}) [{small}]",
    ]


def test_missing_mask_in_a_split_with_masks(raw, tmp_path: Path) -> None:
    gone = raw["masks"] / "test/000001.png"
    gone.unlink()
    with pytest.raises(PrepareError) as e:
        main(argv(raw, tmp_path / "out"))
    assert problem_lines(e) == [
        f"test/000001: missing mask (other images of split 'test' have one: every image of a split needs a "
        f"mask, or none does) [{gone}]"
    ]
    shutil.rmtree(raw["masks"] / "test")  # no mask at all: the split is prepared without masks
    report = main(argv(raw, tmp_path / "out")) or json.loads((tmp_path / "out" / REPORT_NAME).read_text())
    assert report["splits_with_masks"] == ["train", "val"]
    assert read_manifest(tmp_path / "out", "folder").splits["test"].mask_dir is None


def test_masks_folder_without_any_mask(raw, tmp_path: Path) -> None:
    for f in raw["masks"].rglob("*.png"):
        f.rename(f.with_suffix(".tif"))  # masks must be PNG, named like their image
    with pytest.raises(PrepareError) as e:
        main(argv(raw, tmp_path / "out"))
    assert str(e.value) == (
        f"--masks {raw['masks']}: no image of any split has a mask; a mask is <image path without its suffix>.png "
        f"under the mask folder, e.g. {raw['masks'] / 'train/000000.png'}"
    )


def test_two_files_with_one_id(raw, tmp_path: Path) -> None:
    Image.open(raw["images"] / "train/000001.png").save(raw["images"] / "train/000001.jpg")
    with pytest.raises(PrepareError) as e:
        main(argv(raw, tmp_path / "out"))
    assert problem_lines(e) == [
        "train/000001: image files train/000001.jpg, train/000001.png have the same id 'train/000001' (masks "
        "and outputs are named by the path without its suffix): rename or remove all but one "
        f"[{raw['images'] / 'train/000001.jpg'}]"
    ]


@pytest.fixture
def binary(tmp_path: Path) -> dict[str, Path]:
    """A one-class set whose masks store the foreground as 255 (the classic mistake)."""
    p = write_folder_dataset(tmp_path / "bin", SyntheticConfig(num_classes=1, image_size=32, num_train=4, num_val=2,
                                                                num_test=0), negatives=1)
    for f in p["masks"].rglob("*.png"):
        Image.fromarray((np.asarray(Image.open(f)) > 0).astype(np.uint8) * 255).save(f)
    return p


def test_binary_masks_stored_as_255_are_refused_with_the_fix(binary, tmp_path: Path) -> None:
    with pytest.raises(PrepareError) as e:
        main(argv(binary, tmp_path / "out"))
    assert str(e.value) == (
        f"the masks under {binary['masks']} hold only the values 0 and 255, no pixel of a class 1..1: the "
        "foreground looks stored as 255, which means 'ignore'. Rerun with --binary-masks to read 255 as class 1 "
        "('disc/stripes'), or fix the files (0 background, i = class i of the class list, 255 ignore)"
    )
    out = tmp_path / "fixed"
    main(argv(binary, out, "--binary-masks"))
    for f in binary["masks"].rglob("*.png"):
        rel = f.relative_to(binary["masks"])
        src = np.asarray(Image.open(f))
        np.testing.assert_array_equal(read_mask(out / "SegmentationClass" / rel), (src == 255).astype(np.uint8))


def test_one_bit_masks_read_as_class_one(binary, tmp_path: Path) -> None:
    for f in binary["masks"].rglob("*.png"):
        Image.fromarray(np.asarray(Image.open(f)) > 0).save(f)  # bool array: a 1-bit PNG
        assert Image.open(f).mode == "1"
    out = tmp_path / "out"
    main(argv(binary, out))
    for f in binary["masks"].rglob("*.png"):
        np.testing.assert_array_equal(read_mask(out / "SegmentationClass" / f.relative_to(binary["masks"])),
                                      np.asarray(Image.open(f)).astype(np.uint8))


def test_binary_masks_need_one_class(raw, tmp_path: Path) -> None:
    with pytest.raises(PrepareError) as e:
        main(argv(raw, tmp_path / "out", "--binary-masks"))
    assert str(e.value) == (
        "--binary-masks reads mask value 255 as class 1 and needs exactly one class, but there are 3: "
        "disc/stripes, square/checker, triangle/dots"
    )


def test_labels_from_folders_needs_a_class_folder(tmp_path: Path) -> None:
    images = tmp_path / "images"
    for rel in ("cat/a.png", "cat/b.png", "dog/c.png", "loose.png"):
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(images / rel)
    with pytest.raises(PrepareError) as e:
        main(["folder", "--images", str(images), "--labels-from-folders", "--val-fraction", "0.5", "--out",
              str(tmp_path / "out"), "--workers", "0", "--no-progress"])
    assert problem_lines(e) == [
        "loose: image is not inside a class folder (--labels-from-folders: the first folder under --images names "
        f"the class); move it into one, or give a labels CSV [{images / 'loose.png'}]"
    ]


def test_skip_bad_leaves_out_exactly_the_bad_images_and_reports_them(raw, tmp_path: Path) -> None:
    (raw["images"] / "train/000003.png").write_bytes(b"not an image")
    with raw["labels"].open("a") as f:
        f.write("train/999999.png,disc/stripes\n")
    out = tmp_path / "out"
    report = main(argv(raw, out, "--skip-bad")) or json.loads((out / REPORT_NAME).read_text())
    assert sorted(p["image_id"] for p in report["skipped"]) == ["train/000003", "train/999999"]
    train = (out / "splits/train.txt").read_text().split()
    assert len(train) == 11 and "train/000003" not in train
    assert report["images_per_split"]["train"] == 11


@pytest.mark.parametrize(
    "case",
    ["header", "columns", "blank class", "background class", "twice", "separator", "json", "overlap", "unknown split",
     "fraction"],
)
def test_file_structure_mistakes_are_refused_with_file_and_line(case, raw, tmp_path: Path) -> None:
    lab, cls, splits = raw["labels"], raw["classes"], raw["splits"]
    extra: list[str] = []
    if case == "header":
        lab.write_text("file,classes\n" + "".join(lab.read_text().splitlines(True)[1:]))
        expected = (f"{lab}:1: the first row must be the header `image,labels`, found `file,classes` (then one row "
                    "per image: `path/to/image.jpg,class a;class b`)")
    elif case == "columns":
        lab.write_text(lab.read_text() + "train/000001.png,disc/stripes,extra\n")
        n = len(lab.read_text().splitlines())
        expected = (f"{lab}:{n}: expected 2 columns `image,labels`, found 3 (quote a field that contains a comma: "
                    '`"a,b.jpg",cat`; a negative image is `path,` with empty labels)')
    elif case == "blank class":
        cls.write_text("disc/stripes\n\nsquare/checker\ntriangle/dots\n")
        expected = (f"{cls}:2: empty line; line i names class i (mask value i), so a blank line would shift every "
                    "class after it: remove it")
    elif case == "background class":
        cls.write_text("background\n" + cls.read_text())
        expected = (f"{cls}:1: 'background' is not a class: background is mask value 0 and is not listed (line 1 "
                    "is class 1): remove this line")
    elif case == "twice":
        cls.write_text(cls.read_text() + "square/checker\n")
        expected = f"{cls}:4: class 'square/checker' is listed twice (first on line 2)"
    elif case == "separator":
        cls.write_text(cls.read_text() + "a;b\n")
        expected = f"{cls}: class name 'a;b' contains the label separator ';': pass another one, e.g. --label-sep '|'"
    elif case == "json":
        lab = tmp_path / "labels.json"
        lab.write_text('{\n "train/000000.png": ["disc/stripes"],\n "train/000001.png": 3\n}\n')
        expected = f"{lab}:3: the value of 'train/000001.png' must be a list of class names, found 3"
    elif case == "overlap":
        (splits / "val.txt").write_text((splits / "val.txt").read_text() + "train/000005.png\n")
        n = len((splits / "val.txt").read_text().splitlines())
        expected = (f"1 image(s) are in two split files (a split must not share an image with another): "
                    f"train/000005 ({splits / 'train.txt'}:6 and {splits / 'val.txt'}:{n})")
    elif case == "fraction":
        extra = ["--val-fraction", "1.5"]
        expected = "--val-fraction must be between 0 and 1 (exclusive), got 1.5"
    else:
        (splits / "train.txt").write_text("train/nope.png\n" + (splits / "train.txt").read_text())
        expected = None
    args = argv(raw, tmp_path / "out", *(extra if case == "fraction" else []))
    if case == "json":
        args[args.index("--labels") + 1] = str(lab)
    with pytest.raises(PrepareError) as e:
        main(args)
    if expected is None:
        assert problem_lines(e) == [f"train/nope.png: {splits / 'train.txt'}:1: 'train/nope.png' is not an image "
                                    "under --images"]
    else:
        assert str(e.value) == expected


def test_shell_entry_prints_the_refusal_and_exits_1(raw, tmp_path: Path, capsys) -> None:
    (raw["images"] / "train/000003.png").write_bytes(b"x")
    assert cli(argv(raw, tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: 1 bad item(s):\n  train/000003: cannot read ")


def test_folder_data_without_a_root_says_how_to_prepare(monkeypatch) -> None:
    monkeypatch.delenv("CLUSTERCAM_DATA", raising=False)
    with pytest.raises(FileNotFoundError) as e:
        _ = WSSSDataModule(dataset="folder").num_classes
    assert str(e.value) == (
        "data.data_root is not set for data.dataset=folder; prepare it with `python -m clustercam_pl.prepare folder "
        "--images IMAGES --labels labels.csv --val-fraction 0.1 --out DATA_ROOT` and pass `data.data_root=DATA_ROOT`"
    )


# ------------------------------------------------------------------------------- issue 24: links, encodings
def _class_folders(images: Path, n: int = 4) -> None:
    for c in ("cat", "dog"):
        for k in range(n):
            (images / c).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (k * 40, 0, 0)).save(images / c / f"{c}{k}.png")


def _folders_argv(images: Path, out: Path) -> list[str]:
    return ["folder", "--images", str(images), "--labels-from-folders", "--val-fraction", "0.5", "--out", str(out),
            "--workers", "0", "--no-progress"]


def test_a_symlink_loop_in_the_image_tree_is_refused_naming_the_link(tmp_path: Path) -> None:
    images = tmp_path / "images"
    _class_folders(images)
    (images / "dog" / "more").symlink_to(images)  # dog/more/cat/cat0.png would be a "dog" image, forever
    out = tmp_path / "out"
    with pytest.raises(PrepareError) as e:
        main(_folders_argv(images, out))
    link = images / "dog" / "more"
    assert str(e.value) == (
        f"{link} is a symbolic link to {images}, a folder that contains it: a loop that would list every image "
        f"under it again with another path and class. Remove the link (rm {link})"
    )
    assert not (out / MANIFEST_NAME).exists()
    (images / "dog" / "more").unlink()  # without the loop: each file once, in one split, with its own class
    (images / ".cache").mkdir()
    (images / ".cache" / "back").symlink_to(images)  # inside a hidden folder, which is not scanned: no loop
    main(_folders_argv(images, out))
    splits = {s: (out / "splits" / f"{s}.txt").read_text().split() for s in ("train", "val")}
    assert sorted(splits["train"] + splits["val"]) == [f"{c}/{c}{k}" for c in ("cat", "dog") for k in range(4)]
    labels = read_label_file(out / "cls_labels.json", 2, ("cat", "dog"))
    assert all(labels[i] == [0 if i.startswith("cat/") else 1] for i in labels)


def test_a_file_reached_twice_through_links_is_refused_and_a_linked_class_folder_is_fine(tmp_path: Path) -> None:
    images = tmp_path / "images"
    _class_folders(tmp_path / "elsewhere")
    images.mkdir()
    for c in ("cat", "dog"):  # class folders that live elsewhere: followed
        (images / c).symlink_to(tmp_path / "elsewhere" / c)
    out = tmp_path / "out"
    main(_folders_argv(images, out))
    assert len(read_label_file(out / "cls_labels.json", 2, ("cat", "dog"))) == 8
    (images / "dog" / "stray.png").symlink_to(tmp_path / "elsewhere" / "cat" / "cat1.png")
    with pytest.raises(PrepareError) as e:
        main(_folders_argv(images, out))
    assert str(e.value) == (
        f"1 image file(s) are reached twice under {images} (through a symbolic link or a hard link): "
        f"{images / 'dog/stray.png'} and {images / 'cat/cat1.png'}. One image under two paths gets two ids (and, "
        "with --labels-from-folders, two classes) and can land in train and in val; remove the extra link"
    )


def test_a_labels_csv_in_windows_1252_is_refused_with_file_line_and_the_conversion(raw, tmp_path: Path) -> None:
    lab = raw["labels"]
    rows = lab.read_text().splitlines()
    rows[3] = rows[3] + ";caf\u00e9"  # an accented class name, saved by a Windows editor
    lab.write_bytes(("\r\n".join(rows) + "\r\n").encode("cp1252"))
    with pytest.raises(PrepareError) as e:
        main(argv(raw, tmp_path / "out"))
    fixed = lab.with_name("labels.utf8.csv")
    assert lab.name == "labels.csv"
    assert str(e.value) == (
        f"{lab}:4: not UTF-8 (byte 0xe9); input files must be UTF-8. A file saved by Excel or Notepad on Windows "
        f"is usually Windows-1252: convert it with `iconv -f cp1252 -t utf-8 {lab} > {fixed}` and pass {fixed} "
        "instead"
    )
    # The hint works: the converted file is read (and its line 4 now names the unknown class).
    fixed.write_text(lab.read_bytes().decode("cp1252"), encoding="utf-8")
    args = argv(raw, tmp_path / "out")
    args[args.index("--labels") + 1] = str(fixed)
    with pytest.raises(PrepareError) as e:
        main(args)
    assert any(f"{fixed}:4: class 'caf\u00e9' is not in" in line for line in problem_lines(e))


def test_a_labels_csv_with_a_utf8_bom_is_read(raw, tmp_path: Path) -> None:
    raw["labels"].write_bytes(b"\xef\xbb\xbf" + raw["labels"].read_bytes())
    report = main(argv(raw, tmp_path / "out")) or json.loads((tmp_path / "out" / REPORT_NAME).read_text())
    assert report["images_per_split"] == {"train": 12, "val": 5, "test": 2}
