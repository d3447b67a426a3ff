"""The offline VOC server archive check: a good archive passes; a missing id, a wrong size, an RGB PNG
and a value 21 are each refused, named; `eval check_archive=` and `eval export=true` run it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clustercam_pl.data.imageio import write_index_png
from clustercam_pl.eval import evaluate
from clustercam_pl.tasks.evaluate import export_voc_results, voc_results_dir
from clustercam_pl.tasks.voc_archive import ArchiveError, check_voc_archive
from helpers import compose_eval, save_framework_checkpoint, tiny_net

IDS = ["2008_000001", "2008_000002", "2008_000003"]
SIZES = {"2008_000001": (40, 30), "2008_000002": (32, 32), "2008_000003": (24, 36)}  # (w, h) of the JPEGs


def _archive(root: Path, change: str | None = None) -> Path:
    """A server archive of IDS (as eval export=true packs it), with one defect `change`."""
    folder = voc_results_dir(root)
    rng = np.random.default_rng(0)
    for image_id in IDS:
        w, h = SIZES[image_id]
        labels = rng.integers(0, 21, size=(h, w), dtype=np.uint8)  # (h, w) in 0..20
        if change == "missing" and image_id == IDS[1]:
            continue
        if change == "size" and image_id == IDS[1]:
            labels = labels[:, :-1]
        if change == "value" and image_id == IDS[1]:
            labels[0, 0] = 21
        write_index_png(folder / f"{image_id}.png", labels)
        if change == "rgb" and image_id == IDS[1]:
            Image.fromarray(np.stack([labels] * 3, axis=-1)).save(folder / f"{image_id}.png")
    return export_voc_results(root)


def test_a_good_archive_passes(tmp_path):
    result = check_voc_archive(_archive(tmp_path), IDS, SIZES.__getitem__)
    assert result["images"] == 3 and result["competition"] == "comp6" and result["ok"]


@pytest.mark.parametrize(("change", "message"), [
    ("missing", r"\(3 ids expected, 2 found\):\n  1 missing ids: 2008_000002\n"),
    ("size", r"1 wrong PNG: 2008_000002 is 31x32, its JPEG 32x32\n"),
    ("rgb", r"1 wrong PNG: 2008_000002 is mode RGB, not an indexed \(P\) image with the VOC palette\n"),
    ("value", r"1 wrong PNG: 2008_000002 has value 21, outside 0\.\.20\n"),
])
def test_each_defect_is_refused_by_name(tmp_path, change, message):
    with pytest.raises(ArchiveError, match=r"(?s)would be refused by the VOC server .*" + message
                       + r"Fix: re-run `python -m clustercam_pl.eval ckpt_path=\.\.\. split=test export=true`"):
        check_voc_archive(_archive(tmp_path, change), IDS, SIZES.__getitem__)


def test_layout_and_foreign_ids_are_refused(tmp_path):
    import tarfile

    archive = _archive(tmp_path)
    bad = tmp_path / "flat.tar.gz"
    with tarfile.open(archive) as src, tarfile.open(bad, "w:gz") as dst:
        for m in src.getmembers():
            data = src.extractfile(m)
            m.name = Path(m.name).name if m.name.endswith("2008_000003.png") else m.name
            dst.addfile(m, data)
    with pytest.raises(ArchiveError, match=r"1 outside the server's layout .*: 2008_000003\.png\n"
                                           r"  1 missing ids: 2008_000003"):
        check_voc_archive(bad, IDS, SIZES.__getitem__)
    with pytest.raises(ArchiveError, match=r"1 not in the split list: 2008_000003"):
        check_voc_archive(archive, IDS[:2], SIZES.__getitem__)
    with pytest.raises(ArchiveError, match=r"nope\.tar\.gz does not exist"):
        check_voc_archive(tmp_path / "nope.tar.gz", IDS, SIZES.__getitem__)


def test_eval_export_checks_its_archive_and_check_archive_checks_any(tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = save_framework_checkpoint(tiny_net(4, decoder_width=16).eval(), tmp_path / "last.ckpt")
    data = ["data=synthetic", "data.synthetic.image_size=64", "data.synthetic.num_train=2",
            "data.synthetic.num_test=3", "device=cpu", "split=test"]

    def run(over: list[str], out: Path) -> dict:
        return evaluate(compose_eval([*data, *over], out))

    summary = run([f"ckpt_path={ckpt}", "eval=ss", "export=true"], tmp_path / "run")
    assert summary["export_check"] == "ok"
    assert "comp6_test_results.tar.gz (checked, ready to upload)" in capsys.readouterr().out
    archive = summary["export_archive"]
    checked = run([f"check_archive={archive}"], tmp_path / "check")
    assert checked["archive_check"]["images"] == 3
    assert "3 images, layout, sizes, palette and values as the VOC server expects" in capsys.readouterr().out
    with pytest.raises(ArchiveError, match=r"\(4 ids expected, 3 found\):\n  1 missing ids: synthetic_test_000003"):
        run([f"check_archive={archive}", "data.synthetic.num_test=4"], tmp_path / "check")
