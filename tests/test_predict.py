"""`predict` on a user's own images: every kind of file a user has (grayscale, RGBA, 16-bit, palette,
EXIF-rotated, very wide, corrupt, same names in sub-folders), outputs at the inputs' sizes, the jsonl,
class names, resume, the settings guard, and a SIGKILL of a real process running the command, then a rerun."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra import compose
from PIL import Image, ImageOps

from clustercam_pl.cam.config import CAMConfig
from clustercam_pl.checkpoint import load_checkpoint, resolve_class_names
from clustercam_pl.data.imageio import read_image_any
from clustercam_pl.data.labels import COCO_CLASSES, VOC_CLASSES
from clustercam_pl.data.synthetic import SyntheticConfig, class_names, make_sample
from clustercam_pl.data.transforms import apply_transform, build_eval_transform
from clustercam_pl.entry import protocol_from_config
from clustercam_pl.predict import EXIT_SOME_FAILED, run_predict
from clustercam_pl.tasks.predict import RECORD_KEY, PredictSettings, list_inputs, predict_image, working_size
from clustercam_pl.utils.files import FolderBusyError, FolderLock, partial_path
from helpers import fork_process, hydra_config, log_to_stderr, save_framework_checkpoint
from helpers import tiny_net as make_tiny_net

REPO = Path(__file__).resolve().parents[1]
CONF_SYNTHETIC = yaml.safe_load((REPO / "src/clustercam_pl/conf/data/synthetic.yaml").read_text())["synthetic"]
SYN = SyntheticConfig.from_dict({**CONF_SYNTHETIC, "num_classes": 4, "image_size": 64})
NAMES = list(class_names(4))
EXIF_ORIENTATION = 0x0112


def synthetic_rgb(i: int, size: int = 64) -> np.ndarray:
    cfg = SyntheticConfig.from_dict({**CONF_SYNTHETIC, "num_classes": 4, "image_size": size})
    return make_sample(cfg, 0, "val", i)[0]  # (size, size, 3) uint8


def compose_predict(overrides: list[str]):
    with hydra_config():
        return compose("predict", overrides=["device=cpu", "progress=false", *overrides])


def predict_cfg(ckpt: Path, inputs: Path, out: Path, *extra: str) -> dict:
    return run_predict(compose_predict([f"ckpt_path={ckpt}", f"input={inputs}", f"out_dir={out}", *extra]))


def user_images(folder: Path) -> tuple[dict[str, tuple[int, int]], Path]:
    """Files as users have them; returns output key -> displayed (W, H) of every readable one, and the
    corrupt file."""
    folder.mkdir(parents=True)
    rgb = synthetic_rgb(0)
    sizes = {}
    gray = np.tile(np.linspace(0, 255, 56, dtype=np.uint8), (40, 1))  # (40, 56)
    Image.fromarray(gray, "L").save(folder / "gray.png")
    sizes["gray"] = (56, 40)
    rgba = np.dstack([synthetic_rgb(1, 48)[:32], np.full((32, 48), 7, np.uint8)])  # (32, 48, 4), almost transparent
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    sizes["rgba"] = (48, 32)
    deep = (np.arange(44 * 36, dtype=np.uint32).reshape(44, 36) * 41).astype(np.uint16)  # (44, 36), up to 64903
    Image.fromarray(deep).save(folder / "deep16.png")
    sizes["deep16"] = (36, 44)
    Image.fromarray(rgb).quantize(16).save(folder / "palette.png")
    sizes["palette"] = (64, 64)
    stored = np.ascontiguousarray(np.concatenate([rgb, rgb[:8]], axis=0).transpose(1, 0, 2))  # (64, 72, 3): 72 wide
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # shown rotated 90 degrees clockwise: 64 wide, 72 high
    Image.fromarray(stored).save(folder / "phone.jpg", exif=exif, quality=95)
    sizes["phone"] = (64, 72)
    wide = np.tile(synthetic_rgb(2)[:, :, :], (4, 47, 1))[:200, :3000]  # (200, 3000, 3)
    Image.fromarray(wide).save(folder / "wide.png")
    sizes["wide"] = (3000, 200)
    Image.fromarray(synthetic_rgb(3)).save(folder / "photo.webp", quality=90)
    sizes["photo"] = (64, 64)
    Image.fromarray(synthetic_rgb(4)).save(folder / "scan.tif")
    sizes["scan"] = (64, 64)
    Image.fromarray(synthetic_rgb(5)).save(folder / "shot.bmp")
    sizes["shot"] = (64, 64)
    for sub, i in (("day1", 6), ("day2", 7)):  # the same name in two folders
        (folder / sub).mkdir()
        Image.fromarray(synthetic_rgb(i)[:, :48]).save(folder / sub / "same.jpg")
        sizes[f"{sub}/same"] = (48, 64)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    corrupt = folder / "broken.jpg"
    corrupt.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # a header, half the data: truncated
    (folder / "notes.txt.bak").write_text("not an image")  # not an image suffix: not listed
    return sizes, corrupt


def check_outputs(out: Path, sizes: dict[str, tuple[int, int]], inputs: Path, threshold: float, cams: bool) -> list[dict]:
    """Every readable input has its mask, overlay (and CAMs) at its displayed size; the jsonl has one valid
    line per readable input, consistent with the masks."""
    lines = (out / "predictions.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert sorted(r["output"] for r in records) == sorted(sizes)
    assert len({r["input"] for r in records}) == len(records)
    for r in records:
        key, (W, H) = r["output"], sizes[r["output"]]
        assert Path(r["input"]).resolve().relative_to(inputs.resolve()).with_suffix("").as_posix() == key
        assert (r["width"], r["height"]) == (W, H)
        with Image.open(out / f"{key}.png") as im:
            assert im.mode == "P" and im.size == (W, H)
            mask = np.array(im)
            assert json.loads(im.text[RECORD_KEY]) == r
        with Image.open(out / f"{key}_overlay.jpg") as im:
            assert im.size == (W, H)
        assert list(r["scores"]) == NAMES and all(0 <= s <= 1 for s in r["scores"].values())
        assert r["classes"] == [n for n, s in r["scores"].items() if s > threshold]
        counts = np.bincount(mask.ravel(), minlength=5)
        expect = {(["background", *NAMES])[c]: counts[c] / mask.size for c in np.flatnonzero(counts)}
        assert r["pixel_fraction"] == pytest.approx(expect, abs=1e-6)
        for name in r["classes"] if cams else []:
            with Image.open(out / f"{key}_cam_{name.replace('/', '-')}.jpg") as im:
                assert im.size == (W, H)
    return records


@pytest.fixture(scope="module")
def trained_ckpt(tiny_run) -> Path:
    """A tiny network trained 1 epoch on the synthetic set (the shared run's last.ckpt; 4 steps)."""
    return tiny_run.last


@pytest.fixture
def tiny_ckpt(tmp_path) -> Path:
    """An untrained tiny framework checkpoint that names its classes (fast tests)."""
    torch.manual_seed(0)
    net = make_tiny_net(4, patch_size=8).eval()
    cam = asdict(CAMConfig(cam_layers=2, p2p_refine=True, scales=(1.0, 0.75), train_mode=False))
    return save_framework_checkpoint(net, tmp_path / "tiny.ckpt", class_names=NAMES, cam=cam, epoch=0, global_step=0)


# ----------------------------------------------------------------------------------------- reading
def test_read_image_any_modes_and_orientation(tmp_path):
    sizes, corrupt = user_images(tmp_path / "in")
    deep = np.asarray(Image.open(tmp_path / "in" / "deep16.png"))  # (44, 36) uint16
    got = read_image_any(tmp_path / "in" / "deep16.png")
    assert got.shape == (44, 36, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[..., 0], np.rint(deep / 257.0).astype(np.uint8))  # scaled, not clipped
    assert (got[..., 1] == got[..., 0]).all() and np.median(got) > 100
    rgba = np.asarray(Image.open(tmp_path / "in" / "rgba.png"))
    np.testing.assert_array_equal(read_image_any(tmp_path / "in" / "rgba.png"), rgba[..., :3])  # alpha dropped
    pal = Image.fromarray(synthetic_rgb(0)).quantize(8)
    pal.info["transparency"] = 0  # palette entry 0 transparent: its colour is kept, the alpha dropped
    pal.save(tmp_path / "clear.png")
    with Image.open(tmp_path / "clear.png") as im:
        assert im.mode == "P" and "transparency" in im.info
        np.testing.assert_array_equal(read_image_any(tmp_path / "clear.png"), np.asarray(im.convert("RGBA"))[..., :3])
    gray = read_image_any(tmp_path / "in" / "gray.png")
    assert gray.shape == (40, 56, 3) and gray[0, -1].tolist() == [255, 255, 255]
    # EXIF orientation 6: the viewer shows the stored image turned 90 degrees clockwise
    phone = read_image_any(tmp_path / "in" / "phone.jpg")
    with Image.open(tmp_path / "in" / "phone.jpg") as im:
        assert im.size == (72, 64)  # stored
        shown = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        stored = np.asarray(im.convert("RGB"))
    assert phone.shape == (72, 64, 3)
    np.testing.assert_array_equal(phone, shown)
    np.testing.assert_array_equal(phone, np.rot90(stored, k=-1))  # clockwise, independently of PIL's transpose
    with pytest.raises(OSError, match=f"cannot read image {corrupt}: image file is truncated"):
        read_image_any(corrupt)


def test_list_inputs_mirrors_folders_and_separates_same_names(tmp_path):
    for rel in ("a/x.jpg", "b/x.jpg", "c/y.jpg", "c/y.png", "top.png"):
        (tmp_path / "in" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(synthetic_rgb(0)).save(tmp_path / "in" / rel)
    out = tmp_path / "in" / "out"  # out_dir inside the input folder: its files are not inputs
    (out / "old").mkdir(parents=True)
    Image.fromarray(synthetic_rgb(0)).save(out / "old" / "z.png")
    keys = [i.key for i in list_inputs(str(tmp_path / "in"), exclude=out)]
    assert keys == ["a/x", "b/x", "c/y_jpg", "c/y_png", "top"]
    assert [i.key for i in list_inputs(str(tmp_path / "in" / "*" / "x.jpg"))] == ["a/x", "b/x"]
    (tmp_path / "same").mkdir()
    for name in ("z.jpg", "z.JPG", "z.png"):  # one name in three spellings: three outputs
        Image.fromarray(synthetic_rgb(0)).save(tmp_path / "same" / name, format="PNG")
    assert [i.key for i in list_inputs(str(tmp_path / "same"))] == ["z_jpg", "z_jpg_2", "z_png"]
    listing = tmp_path / "list.txt"
    listing.write_text("# my picks\nin/a/x.jpg\n\nin/c/y.png\n" + str(tmp_path / "in" / "missing.jpg") + "\n")
    items = list_inputs(str(listing))
    assert [i.key for i in items] == ["a/x", "c/y", "missing"] and items[0].path == tmp_path / "in" / "a" / "x.jpg"
    with pytest.raises(FileNotFoundError, match=r"^input=.*nowhere does not exist: pass input=<folder \| glob \| image \| \.txt list>$"):
        list_inputs(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=r"^input=.*in is out_dir or lies inside it \(.*\): the masks would land among the inputs; pass an out_dir=\.\.\. outside the input folder$"):
        list_inputs(str(tmp_path / "in"), exclude=tmp_path / "in")
    with pytest.raises(ValueError, match=r"^input: .*a/x\.jpg lies inside out_dir \(.*/in\); pass an out_dir=\.\.\. outside the inputs$"):
        list_inputs(str(listing), exclude=tmp_path / "in")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"^input=.*empty holds no image files \(suffixes \.jpg, .*any case\)$"):
        list_inputs(str(tmp_path / "empty"))


def test_working_size():
    assert working_size(200, 3000, 1024, 16, [1.0]) == (68, 1024)
    assert working_size(500, 400, 1024, 16, [0.5, 1.0]) == (500, 400)  # small enough: unchanged
    h, w = working_size(20, 300, 1024, 16, [0.5, 1.0])  # too thin for half scale: enlarged, aspect kept
    assert int(h * 0.5) >= 16 and abs(w / h - 15) < 0.5


def test_class_names_rule():
    assert resolve_class_names(20) == list(VOC_CLASSES)
    assert resolve_class_names(80) == list(COCO_CLASSES)
    assert resolve_class_names(3) == ["class_1", "class_2", "class_3"]
    assert resolve_class_names(2, ["cat", "dog"]) == ["cat", "dog"]
    assert resolve_class_names(20, ["cat", "dog"]) == list(VOC_CLASSES)  # wrong length: by K


# ------------------------------------------------------------------------------------- end to end
@pytest.mark.slow  # the session's trained run
def test_predict_user_images_with_a_trained_checkpoint(trained_ckpt, tmp_path, caplog):
    sizes, corrupt = user_images(tmp_path / "in")
    out = tmp_path / "out"
    summary = run_predict(compose_predict([f"ckpt_path={trained_ckpt.parent.parent}", f"input={tmp_path / 'in'}",
                                           f"out_dir={out}", "eval=ss"]))
    assert summary["failed"] == [str(corrupt)] and summary["predicted"] == len(sizes)
    assert f"skipping {corrupt}: cannot read image {corrupt}: image file is truncated" in caplog.text
    assert summary["class_names"] == NAMES  # carried by the framework checkpoint
    failed = (out / "failed.txt").read_text().splitlines()
    assert len(failed) == 1 and failed[0].startswith(f"{corrupt}\tcannot read image {corrupt}: image file is truncated")
    records = check_outputs(out, sizes, tmp_path / "in", 0.5, cams=False)
    wide = next(r for r in records if r["output"] == "wide")
    assert wide["predicted_size"] == {"width": 1024, "height": 68}  # max_side=1024, mask resized back
    assert not list(out.rglob("*_cam_*")) and not list(out.rglob("*.part"))
    env = json.loads((out / "env.json").read_text())
    assert env["devices"]["accelerator"] == "cpu"


@pytest.mark.slow  # end to end: three predict runs with CAMs
def test_predict_cams_resume_and_redo(tiny_ckpt, tmp_path):
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    for i, rel in enumerate(("a.png", "b.jpg", "sub/a.png")):
        Image.fromarray(synthetic_rgb(i, 48)).save(inputs / rel)
    sizes = {"a": (48, 48), "b": (48, 48), "sub/a": (48, 48)}
    out = tmp_path / "out"
    first = predict_cfg(tiny_ckpt, inputs, out, "cams=true", "threshold=0.0", "eval=ms_flip")
    assert first["predicted"] == 3 and first["failed"] == [] and not (out / "failed.txt").exists()
    check_outputs(out, sizes, inputs, 0.0, cams=True)
    assert len(list(out.rglob("*_cam_*.jpg"))) == 3 * 4  # threshold 0: every class of every image
    with Image.open(out / "b.png") as im:
        record = json.loads(im.text[RECORD_KEY])
    x, _ = apply_transform(build_eval_transform(), read_image_any(inputs / "b.jpg"))  # (3, 48, 48)
    with torch.no_grad():
        expected = torch.sigmoid(load_checkpoint(tiny_ckpt).net(x[None]).cls_logits[0])  # scale 1, not 0.5
    assert list(record["scores"].values()) == pytest.approx(expected.tolist(), abs=2e-6)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.suffix in (".png", ".jpg")}

    again = predict_cfg(tiny_ckpt, inputs, out, "cams=true", "threshold=0.0", "eval=ms_flip")
    assert again["predicted"] == 0 and again["reused"] == 3
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    (out / "b_cam_ring-noise.jpg").unlink()  # a missing file and an unreadable one: both redone
    overlay = out / "sub" / "a_overlay.jpg"
    overlay.write_bytes(overlay.read_bytes()[:100])
    (out / "a.png.part").write_bytes(b"left by a kill")
    redo = predict_cfg(tiny_ckpt, inputs, out, "cams=true", "threshold=0.0", "eval=ms_flip")
    assert redo["predicted"] == 2 and redo["reused"] == 1
    check_outputs(out, sizes, inputs, 0.0, cams=True)
    assert not list(out.rglob("*.part"))
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 3  # rebuilt, no duplicates

    with pytest.raises(ValueError, match=r"holds predict outputs made with another checkpoint or other settings \(threshold: stored 0\.0, now 0\.5\)\. Pass another out_dir=\.\.\., or overwrite=true to redo every output there$"):
        predict_cfg(tiny_ckpt, inputs, out, "cams=true", "eval=ms_flip")
    over = predict_cfg(tiny_ckpt, inputs, out, "cams=true", "eval=ms_flip", "overwrite=true")
    assert over["predicted"] == 3 and over["threshold"] == 0.5


def test_reference_checkpoint_names_classes_by_k(parity_dir, tmp_path):
    Image.fromarray(synthetic_rgb(0, 96)).save(tmp_path / "one.png")
    summary = predict_cfg(parity_dir / "official_checkpoint.pth", tmp_path / "one.png", tmp_path / "out", "eval=ss")
    assert summary["class_names"] == ["class_1", "class_2", "class_3"]
    record = json.loads((tmp_path / "out" / "predictions.jsonl").read_text())
    assert list(record["scores"]) == ["class_1", "class_2", "class_3"] and record["output"] == "one"
    with pytest.raises(ValueError, match=r"^class_names has 2 names; the network of .*official_checkpoint\.pth predicts 3 classes$"):
        predict_cfg(parity_dir / "official_checkpoint.pth", tmp_path / "one.png", tmp_path / "out2",
                    "class_names=[cat,dog]")


@pytest.mark.slow  # a real process killed mid-run, and a rerun of 24 images
def test_sigkill_then_rerun_leaves_complete_files(tiny_ckpt, tmp_path, caplog):
    """predict SIGKILLed mid-run (a real process: a fork of this one running the command) leaves only
    complete files under their own names; a rerun completes every output and reports the unreadable input
    with the exit status the command line returns (test_predict_inputs.py checks `main` exits with it)."""
    inputs, out, n = tmp_path / "in", tmp_path / "out", 24
    inputs.mkdir()
    for i in range(n):
        Image.fromarray(synthetic_rgb(i, 64)).save(inputs / f"img{i:02d}.png")
    (inputs / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    args = ["eval=ms_flip", "cams=true", "threshold=0.0"]
    proc = fork_process(predict_cfg, tiny_ckpt, inputs, out, *args)
    t0 = time.time()
    while len(list(out.glob("img*.png"))) < 3:
        assert proc.is_alive(), f"the run ended early (exit code {proc.exitcode})"
        assert time.time() - t0 < 120, "no output appeared"
        time.sleep(0.02)
    proc.kill()  # SIGKILL
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    masks = list(out.glob("img*.png"))
    assert 3 <= len(masks) < n
    for f in [*masks, *out.glob("*.jpg")]:  # whatever has its own name is complete
        with Image.open(f) as im:
            im.load()
    with caplog.at_level(logging.INFO, logger="clustercam_pl"):
        rerun = predict_cfg(tiny_ckpt, inputs, out, *args)
    assert rerun["reused"] >= 3 and rerun["reused"] + rerun["predicted"] == n
    assert (f"1 of {n + 1} inputs could not be read (listed in {out / 'failed.txt'}); "
            f"exit status {EXIT_SOME_FAILED}") in caplog.text
    assert (out / "failed.txt").read_text().startswith(f"{inputs / 'zz_broken.png'}\t")
    sizes = {f"img{i:02d}": (64, 64) for i in range(n)}
    records = check_outputs(out, sizes, inputs, 0.0, cams=True)
    assert len(records) == n and not list(out.rglob("*.part"))


def test_crf_in_a_worker_pool_equals_crf_in_the_process(tiny_ckpt, tmp_path):
    pytest.importorskip("pydensecrf.densecrf", reason="optional dependency pydensecrf2 is not installed")
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        Image.fromarray(synthetic_rgb(i, 48)).save(inputs / f"img{i}.png")
    out = tmp_path / "out"
    summary = predict_cfg(tiny_ckpt, inputs, out, "eval=ss_crf", "crf_workers=1")  # one worker process
    assert summary["predicted"] == 3 and [s["name"] for s in summary["protocol"]["postprocess"]] == ["crf"]
    ckpt = load_checkpoint(tiny_ckpt)
    settings = PredictSettings(protocol_from_config(compose_predict(["eval=ss_crf"]).eval))
    for i in range(3):
        inline = predict_image(ckpt.net.eval(), read_image_any(inputs / f"img{i}.png"), settings, torch.device("cpu"))
        with Image.open(out / f"img{i}.png") as im:
            np.testing.assert_array_equal(np.array(im), inline.label)


@pytest.mark.slow  # two forked processes (gloo), twice
def test_two_process_predict_writes_every_file_once_as_one_process(tiny_ckpt, tmp_path, two_forked_processes,
                                                                   capfd):
    """predict on 2 CPU processes (forks of this one): every input predicted by one process, every file
    written once and byte for byte what one process writes, the summary logged once by the main process,
    and a rerun shares out only what is not done yet."""
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    for i, rel in enumerate(("a.png", "b.jpg", "c.png", "d.png", "sub/a.png")):
        Image.fromarray(synthetic_rgb(i, 48)).save(inputs / rel)
    corrupt = inputs / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    # 6 inputs: shares of 3 and 3, the corrupt one (index 2 in name order) in the main process's.
    extra = ["cams=true", "threshold=0.0", "eval=ms_flip"]
    one_dir, two_dir = tmp_path / "one", tmp_path / "two"
    one = predict_cfg(tiny_ckpt, inputs, one_dir, *extra)  # one torch thread, as the processes below
    with log_to_stderr():
        capfd.readouterr()
        two = predict_cfg(tiny_ckpt, inputs, two_dir, *extra, *two_forked_processes)
        log_text = capfd.readouterr().err
    # Every readable input predicted once (5 over both processes, not 6 or 10), the corrupt one failed once.
    assert (two["predicted"], two["reused"], two["failed"]) == (5, 0, [str(corrupt)])
    assert log_text.count("5 predicted, 0 already done, 1 failed (") == 1
    assert log_text.count(f"skipping {corrupt}: ") == 1
    assert log_text.count(f"1 of 6 inputs could not be read (listed in {two_dir / 'failed.txt'}); exit status 3") == 1
    assert one["predicted"] == 5 and one["failed"] == [str(corrupt)]
    assert (two_dir / "failed.txt").read_text() == (one_dir / "failed.txt").read_text()
    assert len((two_dir / "failed.txt").read_text().splitlines()) == 1
    assert (two_dir / "predictions.jsonl").read_text() == (one_dir / "predictions.jsonl").read_text()
    sizes = {k: (48, 48) for k in ("a", "b", "c", "d", "sub/a")}
    check_outputs(two_dir, sizes, inputs, 0.0, cams=True)
    images = sorted(p.relative_to(one_dir) for p in one_dir.rglob("*") if p.suffix in (".png", ".jpg"))
    assert len(images) == 5 * (2 + 4)  # mask, overlay and 4 CAMs each
    assert sorted(p.relative_to(two_dir) for p in two_dir.rglob("*") if p.suffix in (".png", ".jpg")) == images
    for rel in images:
        assert (two_dir / rel).read_bytes() == (one_dir / rel).read_bytes(), rel
    assert not list(two_dir.rglob("*.part"))
    assert json.loads((two_dir / "env.json").read_text())["world_size"] == 2
    assert two["predicted_per_process"] == [2, 3]
    assert re.search(r"5 predicted, 0 already done, 1 failed \(.*; per process \[2, 3\]\)", log_text)

    # A rerun shares out what is not done yet: a, b, broken and d (indices 0, 1, 2, 4) give the main
    # process a and broken, the other b and d: [1, 2] predicted (sharding all inputs first: [2, 1]).
    for key in ("a", "b", "d"):
        (two_dir / f"{key}.png").unlink()
    with log_to_stderr():
        again = predict_cfg(tiny_ckpt, inputs, two_dir, *extra, *two_forked_processes)
        log_text = capfd.readouterr().err
    assert (again["predicted"], again["reused"], again["predicted_per_process"]) == (3, 2, [1, 2])
    assert re.search(r"3 predicted, 2 already done, 1 failed \(.*; per process \[1, 2\]\)", log_text), log_text[-3000:]
    assert (two_dir / "predictions.jsonl").read_text() == (one_dir / "predictions.jsonl").read_text()
    for rel in images:
        assert (two_dir / rel).read_bytes() == (one_dir / rel).read_bytes(), rel


def test_second_run_into_a_busy_out_dir_is_refused_and_leaves_the_first_alone(tiny_ckpt, tmp_path):
    """Issue 24: two predict runs into one out_dir. The first (here: its lock, held in this process, and
    a partial file it is writing) owns the folder; the second is refused naming the folder and the owner,
    and deletes nothing."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(synthetic_rgb(0, 48)).save(inputs / "a.png")
    out = tmp_path / "out"
    predict_cfg(tiny_ckpt, inputs, out)  # the settings the "first run" uses: meta.json agrees
    first = FolderLock(out, ".predict.lock", user="predict run", hint="")
    first.acquire()
    try:
        writing = partial_path(out / "a_overlay.jpg")  # the first run's file in flight (this live pid)
        writing.write_bytes(b"half a jpeg")
        stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
        with pytest.raises(FolderBusyError, match=rf"^output folder {re.escape(str(out))} is in use by another "
                           rf"predict run \(pid {os.getpid()} on host .*\); wait for it to end or stop it, or pass "
                           r"another out_dir=\.\.\.\.$"):
            predict_cfg(tiny_ckpt, inputs, out)
        assert writing.read_bytes() == b"half a jpeg"
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps  # nothing written, nothing removed
    finally:
        first.release()
    assert predict_cfg(tiny_ckpt, inputs, out)["reused"] == 1  # once the first has ended, a rerun goes ahead
