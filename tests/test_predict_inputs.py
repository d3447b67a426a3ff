"""predict's inputs (issue 24): a decompression bomb among good images fails by name and the others are
predicted; a large JPEG is decoded reduced, within a memory bound, and its outputs keep its size; a
recursive glob over a symlink loop ends, each real file listed once; a listed link keeps its outputs
inside out_dir."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

import clustercam_pl.tasks.predict as task
from clustercam_pl.data.imageio import ImageTooLargeError, read_image_any, read_image_reduced
from clustercam_pl.predict import EXIT_SOME_FAILED, main
from clustercam_pl.tasks.predict import list_inputs
from test_predict import predict_cfg, synthetic_rgb
from test_predict import tiny_ckpt as tiny_ckpt  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parents[1]


def bomb_png(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A 67-byte PNG whose header claims width x height pixels: a 1 x 1 PNG's IHDR patched, its CRC redone."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())  # signature (8), IHDR length (4), b"IHDR" (4), width, height, ..., CRC
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def gradient_jpeg(path: Path, width: int, height: int) -> Path:
    """A smooth (small) JPEG of width x height."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]  # (1, W)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]  # (H, 1)
    rgb = np.stack(np.broadcast_arrays(x + 0 * y, y + 0 * x, (x + y) / 2), axis=-1).astype(np.uint8)  # (H, W, 3)
    Image.fromarray(rgb).save(path, quality=90)
    return path


def test_bomb_png_fails_by_name_and_the_others_are_predicted(tiny_ckpt, tmp_path, monkeypatch):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    Image.fromarray(synthetic_rgb(0)).save(inputs / "a.png")
    bomb = bomb_png(inputs / "b.png")
    Image.fromarray(synthetic_rgb(1)).save(inputs / "c.png")
    assert len(bomb.read_bytes()) < 100
    limit = Image.MAX_IMAGE_PIXELS
    monkeypatch.setattr(sys, "argv", ["predict", f"ckpt_path={tiny_ckpt}", f"input={inputs}", f"out_dir={out}",
                                      "device=cpu", "progress=false", "eval=ss", "max_side=64"])
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit) as done:
        main()  # the command as a user runs it: the exit status is the documented one
    GlobalHydra.instance().clear()
    assert done.value.code == EXIT_SOME_FAILED == 3
    assert Image.MAX_IMAGE_PIXELS == limit  # PIL's process-wide check is back as it was
    reason = (f"image {bomb}: its header declares 100000 x 100000 = 10,000,000,000 pixels, more than "
              "max_pixels=200000000 (a decompression bomb, or a huge scan); if the file is genuine, pass "
              "max_pixels=10000000000 (decoding it whole needs at least 40.0 GB)")
    assert (out / "failed.txt").read_text() == f"{bomb}\t{reason}\n"
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["output"] for r in records] == ["a", "c"]  # the image after the bomb was predicted too
    assert (out / "a.png").is_file() and (out / "c.png").is_file() and not (out / "b.png").exists()
    with pytest.raises(ImageTooLargeError, match="pass max_pixels=10000000000"):
        read_image_any(bomb)
    with pytest.raises(ImageTooLargeError, match=r"declares 64 x 64 = 4,096 pixels, more than max_pixels=4095"):
        read_image_any(inputs / "a.png", max_pixels=4095)
    np.testing.assert_array_equal(read_image_any(inputs / "a.png", max_pixels=4096), synthetic_rgb(0))


@pytest.mark.slow  # an interpreter of its own, under a memory limit
def test_large_jpeg_is_decoded_reduced_within_a_memory_bound(tmp_path):
    """In a fresh interpreter (numpy and PIL only), peak resident memory: a 15-megapixel JPEG decoded reduced to
    1/16 per side costs < 8 MB; decoded whole (the check can fail) > 3 bytes a pixel."""
    big = gradient_jpeg(tmp_path / "big.jpg", 4800, 3200)
    code = (
        "import sys\n"
        "from clustercam_pl.data.imageio import read_image_any, read_image_reduced\n"
        "def peak():  # bytes; VmHWM, not ru_maxrss: that one keeps the forking pytest's peak\n"
        "    return next(int(s.split()[1]) * 1024 for s in open('/proc/self/status') if s.startswith('VmHWM'))\n"
        "base = peak()\n"
        "d = read_image_reduced(sys.argv[1], lambda H, W: (H // 16, W // 16))\n"
        "reduced = peak() - base\n"
        "read_image_any(sys.argv[1])\n"
        "print(d.rgb.shape, d.size, reduced, peak() - base)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code, str(big)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    reduced, whole = map(int, done.stdout.split()[-2:])  # bytes
    assert done.stdout.startswith("(200, 300, 3) (3200, 4800) ")  # DCT-scaled to 1/8, then halved
    assert reduced < 8 * 2**20, done.stdout
    assert whole > 3 * 4800 * 3200, done.stdout


@pytest.mark.slow  # end to end on a large image
def test_large_jpeg_predicted_reduced_outputs_at_its_size(tiny_ckpt, tmp_path, monkeypatch):
    inputs = tmp_path / "in"
    inputs.mkdir()
    gradient_jpeg(inputs / "big.jpg", 1600, 1200)
    decoded = []

    def spy(*args, **kwargs):
        image = read_image_reduced(*args, **kwargs)
        decoded.append((image.rgb.shape, image.size))
        return image

    monkeypatch.setattr(task, "read_image_reduced", spy)
    summary = predict_cfg(tiny_ckpt, inputs, tmp_path / "out", "eval=ss", "max_side=64", "cams=true",
                          "threshold=0")
    assert summary["failed"] == [] and summary["predicted"] == 1
    assert decoded == [((50, 67, 3), (1200, 1600))]  # 1/8 by DCT scaling, then 1/3: at least the 48 x 64 needed
    record = json.loads((tmp_path / "out" / "predictions.jsonl").read_text())
    assert record["predicted_size"] == {"width": 64, "height": 48}
    assert (record["width"], record["height"]) == (1600, 1200)
    pictures = sorted((tmp_path / "out").glob("big*"))
    assert len(pictures) == 2 + 4  # mask, overlay, a CAM per class (threshold 0)
    for p in pictures:
        with Image.open(p) as im:
            assert im.size == (1600, 1200), p


def loop_tree(root: Path) -> Path:
    """in/{x.png, a/y.png, a/b/z.png} and, in a/b, two links back to in/ and one to a/: `glob.glob`'s
    recursive walk would follow them to ~3^40 paths."""
    (root / "a" / "b").mkdir(parents=True)
    for rel in ("x.png", "a/y.png", "a/b/z.png"):
        Image.fromarray(synthetic_rgb(0)[:16, :16]).save(root / rel)
    os.symlink("../..", root / "a" / "b" / "up")
    os.symlink(root, root / "a" / "b" / "top")
    os.symlink("..", root / "a" / "b" / "parent")
    return root


@pytest.mark.timeout(60)
def test_recursive_glob_over_a_symlink_loop_lists_each_file_once(tmp_path, caplog, monkeypatch):
    root = loop_tree(tmp_path / "in")
    caplog.set_level("INFO", logger="clustercam_pl.predict")
    items = list_inputs(str(root / "**" / "*.png"))  # no hang: the timeout above bounds it, load or not
    assert [(i.path, i.key) for i in items] == [(root / "a" / "b" / "z.png", "a/b/z"), (root / "a" / "y.png", "a/y"),
                                                (root / "x.png", "x")]
    assert f"not entering {root / 'a' / 'b' / 'top'}: it leads to {root}, already listed" in caplog.text
    assert [i.key for i in list_inputs(str(root))] == ["a/b/z", "a/y", "x"]  # the folder form: links not entered
    monkeypatch.chdir(root)  # a relative pattern starting with the wildcard
    assert [(str(i.path), i.key) for i in list_inputs("**/y.png")] == [("a/y.png", "y")]


def test_recursive_glob_matches_glob_without_links(tmp_path):
    """The walk for `**` lists what `glob.glob(recursive=True)` lists: hidden names, classes, depth 0."""
    import glob

    for rel in ("x.jpg", ".h.jpg", "a/y.jpg", "a/b/z.jpg", "a/b/z.JPG", ".hid/q.jpg", "c/w.png", "a/b1.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    for pattern in ("**/*.jpg", "**", "**/b/*", "*/**/*.jpg", "**/.h*", "**/b?.jpg", "**/[xy].jpg", "**/[!x].jpg",
                    "a/**/*.jpg", "**/.hid/*.jpg", "**/*/"):
        text = str(tmp_path / pattern)
        expect = sorted(f for f in glob.glob(text, recursive=True) if Path(f).is_file())
        assert sorted(map(str, task._glob_files(text))) == expect, pattern


def test_a_linked_file_keeps_its_outputs_inside_out_dir(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "elsewhere").mkdir()
    Image.fromarray(synthetic_rgb(0)).save(tmp_path / "elsewhere" / "x.png")
    os.symlink(tmp_path / "elsewhere" / "x.png", tmp_path / "in" / "link.png")
    assert [i.key for i in list_inputs(str(tmp_path / "in"))] == ["link"]  # not ../elsewhere/x
