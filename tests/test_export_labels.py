"""Pseudo-label export: files and formats, mIoU against a direct computation, the LightningModule's
pseudo labels, resume after an interrupt, settings guard. A tiny random network saved by hand keeps
these at a second or two; the real SIGKILL run is marked slow."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from clustercam_pl.cam.config import CAMConfig
from clustercam_pl.data.synthetic import SyntheticConfig, SyntheticWSSS
from clustercam_pl.export_labels import export_pseudo_labels
from clustercam_pl.lit_module import ClusterCAMLitModule
from clustercam_pl.losses import LossConfig
from clustercam_pl.metrics import SegmentationIoU
from clustercam_pl.models import ClusterCAMNet
from clustercam_pl.optim import OptimConfig
from clustercam_pl.tasks.export_labels import read_done
from clustercam_pl.utils.files import FolderBusyError, FolderLock, partial_path
from helpers import compose_config, fork_process, save_framework_checkpoint
from helpers import tiny_net as make_tiny_net

N = 6
# The generator settings of conf/data/synthetic.yaml, as the commands under test use them.
CONF_SYNTHETIC = yaml.safe_load((Path(__file__).parents[1] / "src/clustercam_pl/conf/data/synthetic.yaml").read_text())["synthetic"]
SYN = {**CONF_SYNTHETIC, "num_classes": 4, "image_size": 64, "num_train": N, "num_val": 2, "num_test": 2}
OVERRIDES = ["data=synthetic", "data.synthetic.image_size=64", f"data.synthetic.num_train={N}",
             "data.val_batch_size=2", "cam.par_iters=2", "cam.par_dilations=[1,2]", "device=cpu"]
IDS = [f"synthetic_train_{i:06d}" for i in range(N)]


def tiny_net() -> ClusterCAMNet:
    torch.manual_seed(0)
    return make_tiny_net(4, decoder_width=16, drop_path_rate=0.1).eval()


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return save_framework_checkpoint(tiny_net(), tmp_path / "last.ckpt", cam={"cam_layers": 2, "p2p_refine": True})


def run(ckpt: Path, out: Path, *extra: str) -> dict:
    cfg = compose_config("export_labels", [*OVERRIDES, f"ckpt_path={ckpt}", f"out_dir={out}", *extra], out.parent / "run")
    return export_pseudo_labels(cfg)


def read_label(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "P"
        return np.array(im)


def test_export_writes_labels_cams_and_scores_them(ckpt, tmp_path, capsys):
    out = tmp_path / "pl"
    summary = run(ckpt, out)
    assert summary["computed"] == N and summary["resumed"] == 0
    assert sorted(p.name for p in (out / "labels").iterdir()) == [f"{i}.png" for i in IDS]
    assert sorted(p.name for p in (out / "cams").iterdir()) == [f"{i}.npz" for i in IDS]

    # The labels are the LightningModule's pseudo labels with the network in eval mode.
    cam = CAMConfig(cam_layers=2, par_iters=2, par_dilations=(1, 2))
    module = ClusterCAMLitModule(tiny_net(), cam, LossConfig(), OptimConfig()).eval()
    ds = SyntheticWSSS("train", SyntheticConfig.from_dict(SYN), seed=0, with_mask=True)
    pseudo_metric, cam_metric = SegmentationIoU(5), SegmentationIoU(5)
    for i, image_id in enumerate(IDS):
        item = ds[i]
        cams, pseudo = module.segmentation_targets(item["image"][None], item["cls_label"][None])
        label = read_label(out / "labels" / f"{image_id}.png")
        np.testing.assert_array_equal(label, pseudo[0].numpy())
        with np.load(out / "cams" / f"{image_id}.npz") as z:
            present = np.flatnonzero(item["cls_label"].numpy())
            assert z["cams"].dtype == np.float16 and z["cams"].shape == (len(present), 16, 16)
            np.testing.assert_array_equal(z["classes"], present)
            small = torch.nn.functional.avg_pool2d(cams[0, present], 4).numpy()
            np.testing.assert_allclose(z["cams"].astype(np.float32), small, atol=2e-3)
            assert list(z["image_size"]) == [64, 64]
        scored = torch.from_numpy(np.where(label == 255, 0, label)).long()  # ignore band as background
        pseudo_metric.update(scored[None], item["mask"][None])
        bg = torch.full_like(cams[:, :1], cam.cam_background)
        cam_metric.update(torch.cat([bg, cams], 1).argmax(1), item["mask"][None])
    assert summary["pseudo_miou"] == pytest.approx(float(pseudo_metric.compute()["miou"]), abs=1e-6)
    assert summary["cam_miou"] == pytest.approx(float(cam_metric.compute()["miou"]), abs=1e-6)
    assert 0 <= summary["ignored_fraction"] < 1 and 0 <= summary["pseudo_miou_valid"] <= 1
    assert f"pseudo-label mIoU {100 * summary['pseudo_miou']:.2f}" in capsys.readouterr().out
    assert (out / "pseudo_label_metrics.json").is_file()
    assert (tmp_path / "run" / "pseudo_label_metrics.json").is_file()


def test_resume_redoes_only_what_is_missing(ckpt, tmp_path):
    out = tmp_path / "pl"
    first = run(ckpt, out)
    old = time.time() - 1000
    for f in [*(out / "labels").iterdir(), *(out / "cams").iterdir()]:
        os.utime(f, (old, old))
    (out / "labels" / f"{IDS[1]}.png").unlink()  # one output deleted
    # A kill while image 4 was written: only its temporary file exists, half-written.
    (out / "cams" / f"{IDS[4]}.npz").unlink()
    (out / "labels" / f"{IDS[4]}.png").unlink()
    (out / "cams" / f"{IDS[4]}.npz.part").write_bytes(b"PK\x03\x04 half")
    # A file truncated under its final name (not something our writes leave, but never trusted).
    npz3 = out / "cams" / f"{IDS[3]}.npz"
    npz3.write_bytes(npz3.read_bytes()[:50])
    os.utime(npz3, (old, old))

    second = run(ckpt, out)
    assert second["computed"] == 3 and second["resumed"] == N - 3
    redone = {IDS[1], IDS[3], IDS[4]}
    for image_id in IDS:
        for f in (out / "labels" / f"{image_id}.png", out / "cams" / f"{image_id}.npz"):
            assert (f.stat().st_mtime > old + 1) == (image_id in redone), f
    assert not list(out.rglob("*.part"))
    assert len(list((out / "labels").iterdir())) == len(list((out / "cams").iterdir())) == N
    for key in ("pseudo_miou", "pseudo_miou_valid", "cam_miou", "ignored_fraction"):
        assert second[key] == pytest.approx(first[key], abs=1e-9), key

    third = run(ckpt, out)
    assert third["computed"] == 0 and third["pseudo_miou"] == pytest.approx(first["pseudo_miou"], abs=1e-9)


def test_other_settings_are_refused_unless_overwrite(ckpt, tmp_path):
    out = tmp_path / "pl"
    run(ckpt, out, "limit=2")
    with pytest.raises(ValueError, match=r"holds export_labels outputs made with another checkpoint or other settings \(cam: stored"):
        run(ckpt, out, "limit=2", "cam.bg_high=0.6")
    redo = run(ckpt, out, "limit=2", "cam.bg_high=0.6", "overwrite=true")
    assert redo["computed"] == 2 and redo["cam"]["bg_high"] == 0.6


@pytest.mark.slow  # a real process killed mid-run, and a rerun of 40 images
def test_sigkill_then_rerun_completes(ckpt, tmp_path, capsys):
    """export_labels SIGKILLed mid-run (a real process: a fork of this one running the command) is
    completed by a rerun: every label and CAM file, none partial, the scores printed."""
    out = tmp_path / "pl"
    n = 40
    args = (ckpt, out, f"data.synthetic.num_train={n}", "data.val_batch_size=1")
    proc = fork_process(run, *args)
    t0 = time.time()
    labels = out / "labels"
    while not (labels.is_dir() and len(list(labels.glob("*.png"))) >= 3):
        assert proc.is_alive(), f"the run ended early (exit code {proc.exitcode})"
        assert time.time() - t0 < 240, "no output appeared"
        time.sleep(0.05)
    proc.kill()  # SIGKILL
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    done_before = len(list((out / "labels").glob("*.png")))
    assert done_before < n
    capsys.readouterr()
    rerun = run(*args)
    assert (rerun["resumed"], rerun["computed"]) == (done_before, n - done_before)
    assert len(list((out / "labels").glob("*.png"))) == len(list((out / "cams").glob("*.npz"))) == n
    assert not list(out.rglob("*.part"))
    assert "pseudo-label mIoU" in capsys.readouterr().out


def _record_end(ended: list[BaseException], fn, *args) -> None:
    try:
        fn(*args)
    except BaseException as e:  # the launcher's error when its processes are killed
        ended.append(e)
    else:
        ended.append(AssertionError("the run finished before it was killed"))


def _files(out: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every label PNG and npz array under `out`, by relative path."""
    found: dict[str, dict[str, np.ndarray]] = {}
    for path in sorted(out.rglob("*.png")):
        found[str(path.relative_to(out))] = {"label": read_label(path)}
    for path in sorted(out.rglob("*.npz")):
        with np.load(path) as z:
            found[str(path.relative_to(out))] = {k: z[k] for k in z.files}
    return found


@pytest.mark.slow  # two forked processes (gloo)
def test_two_process_export_writes_each_file_once_and_the_same_files(ckpt, tmp_path, two_forked_processes):
    """export_labels on 2 CPU processes (forks of this one): each image done by one process, the same
    files, bits and scores as one process."""
    # 5 images: shares of 3 and 2 (a DistributedSampler would pad to 3 + 3 and do one image twice).
    # One torch thread here and in the forks: the same float reductions, the same bits.
    one = run(ckpt, tmp_path / "one" / "pl", "data.synthetic.num_train=5")
    two = run(ckpt, tmp_path / "two" / "pl", "data.synthetic.num_train=5", *two_forked_processes)
    assert one["computed_per_process"] == [5] and two["computed_per_process"] == [3, 2]
    assert two["processes"] == 2 and two["computed"] == 5 and two["resumed"] == 0
    a, b = _files(tmp_path / "one" / "pl"), _files(tmp_path / "two" / "pl")
    assert sorted(a) == sorted(b) and len([k for k in a if k.endswith(".png")]) == 5
    for name in a:
        assert sorted(a[name]) == sorted(b[name]), name
        for key in a[name]:
            np.testing.assert_array_equal(a[name][key], b[name][key], err_msg=f"{name}:{key}")
    for key in ("pseudo_miou", "pseudo_miou_valid", "cam_miou", "ignored_fraction"):
        assert two[key] == one[key], key
    assert two["text"] == one["text"].replace(str(tmp_path / "one"), str(tmp_path / "two"))
    assert not list((tmp_path / "two").rglob("*.part"))


@pytest.mark.slow  # a job of two real processes killed mid-run, and a two-process rerun
def test_sigkill_during_two_process_export_then_rerun_completes(ckpt, tmp_path, two_forked_processes, capfd):
    """A 2-process export_labels job SIGKILLed mid-run (both ranks, real processes forked from this one
    by the launcher, which runs in a thread here): a 2-process rerun computes only what is missing,
    shared by both processes, and leaves every file complete; the scores are printed once."""
    out = tmp_path / "pl"
    n = 40
    args = (ckpt, out, f"data.synthetic.num_train={n}", "data.val_batch_size=1", *two_forked_processes)
    before = set(multiprocessing.active_children())
    ended: list[BaseException] = []
    job = threading.Thread(target=lambda: _record_end(ended, run, *args), daemon=True)
    job.start()
    ranks: list = []
    try:
        t0 = time.time()
        labels = out / "labels"
        while not (labels.is_dir() and len(list(labels.glob("*.png"))) >= 4):
            assert job.is_alive(), f"the run ended early: {ended}"
            assert time.time() - t0 < 240, "no output appeared"
            time.sleep(0.05)
    finally:
        ranks = [p for p in multiprocessing.active_children() if p not in before]
        for p in ranks:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
        job.join(60)
    assert len(ranks) == 2 and not job.is_alive()
    assert all(p.exitcode in (-signal.SIGKILL, -signal.SIGTERM) for p in ranks)  # or ended by the launcher
    assert ended and not isinstance(ended[0], AssertionError)  # the launcher saw its processes killed
    done_before = len(list(labels.glob("*.png")))  # a label PNG is written after its npz
    assert done_before < n
    capfd.readouterr()
    run(*args)
    printed = capfd.readouterr().out
    metrics = json.loads((out / "pseudo_label_metrics.json").read_text())
    assert metrics["resumed"] == done_before and metrics["computed"] == n - done_before
    assert sum(metrics["computed_per_process"]) == n - done_before and metrics["processes"] == 2
    assert len(list(labels.glob("*.png"))) == len(list((out / "cams").glob("*.npz"))) == n
    assert not list(out.rglob("*.part"))
    for i in range(n):  # complete and readable
        assert read_done(out, f"synthetic_train_{i:06d}", 5), i
    assert printed.count("pseudo-label mIoU") == 1


def test_second_export_into_a_busy_out_dir_is_refused_and_leaves_the_first_alone(ckpt, tmp_path):
    """Issue 24: a second export into an out_dir that a running export owns (its lock held here, a
    label it is writing) is refused, naming the folder and the owner, and deletes nothing."""
    out = tmp_path / "pl"
    run(ckpt, out, "limit=2")
    first = FolderLock(out, ".export_labels.lock", user="export_labels run", hint="")
    first.acquire()
    try:
        writing = partial_path(out / "labels" / f"{IDS[2]}.png")  # in flight, by this live pid
        writing.write_bytes(b"half a png")
        stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
        with pytest.raises(FolderBusyError, match=rf"^output folder {re.escape(str(out))} is in use by another "
                           rf"export_labels run \(pid {os.getpid()} on host .*\); wait for it to end or stop it, "
                           r"or pass another out_dir=\.\.\.\.$"):
            run(ckpt, out, "limit=2")
        assert writing.read_bytes() == b"half a png"
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps
    finally:
        first.release()
    assert run(ckpt, out, "limit=2")["resumed"] == 2
