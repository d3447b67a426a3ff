"""Evaluation entry point: protocols against a direct computation, CRF, reference checkpoints,
several checkpoints (last / best), VOC server export, errors. A tiny random network saved by hand
keeps every test at a second or two; one test runs the real command line."""

from __future__ import annotations

import json
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from clustercam_pl.cam.config import CAMConfig
from clustercam_pl.cam.par import PAR
from clustercam_pl.checkpoint import (
    find_checkpoints,
    load_checkpoint,
    ours_to_reference,
)
from clustercam_pl.data.imageio import voc_palette
from clustercam_pl.data.synthetic import SyntheticConfig, SyntheticWSSS, make_sample
from clustercam_pl.entry import protocol_from_config
from clustercam_pl.eval import evaluate
from clustercam_pl.inference.crf import to_uint8_image
from clustercam_pl.inference.network import predict, pseudo_labels_per_image
from clustercam_pl.metrics import SegmentationIoU
from clustercam_pl.models import ClusterCAMNet
from clustercam_pl.tasks.evaluate import report
from helpers import CONF_DIR, TINY_OVERRIDES, compose_eval, run_command
from helpers import save_framework_checkpoint as save_framework
from helpers import tiny_net as make_tiny_net

REPO = Path(__file__).resolve().parents[1]
# The generator settings of conf/data/synthetic.yaml, as the commands under test use them.
CONF_SYNTHETIC = yaml.safe_load((Path(__file__).parents[1] / "src/clustercam_pl/conf/data/synthetic.yaml").read_text())["synthetic"]
SYN = {**CONF_SYNTHETIC, "num_classes": 4, "image_size": 64, "num_train": 4, "num_val": 4, "num_test": 3}
DATA = ["data=synthetic", "data.synthetic.image_size=64", "data.synthetic.num_train=4",
        "data.synthetic.num_val=4", "data.synthetic.num_test=3", "data.val_batch_size=2", "device=cpu"]
MS = (0.5, 0.75, 1.0, 1.25, 1.5)


def tiny_net(seed: int = 0) -> ClusterCAMNet:
    torch.manual_seed(seed)
    return make_tiny_net(4, decoder_width=16).eval()


def direct_probs(net: ClusterCAMNet, image: torch.Tensor, scales, flip: bool) -> torch.Tensor:
    """The reference's infer_e2e.py loop written out per image (align_corners=True resize at every scale)."""
    _, _, H, W = image.shape
    probs = torch.zeros(1, net.cfg.num_classes + 1, H, W)
    with torch.no_grad():
        for s in scales:
            x = F.interpolate(image, size=(int(H * s), int(W * s)), mode="bilinear", align_corners=True)
            for mirror in ([False, True] if flip else [False]):
                xi = x.flip(-1) if mirror else x
                seg = F.interpolate(net(xi).seg_logits, size=(H, W), mode="bilinear", align_corners=False)
                p = (seg.flip(-1) if mirror else seg).softmax(1)
                probs = torch.maximum(probs, p)
    return probs


def direct_miou(net, split="val", scales=(1.0,), flip=False, crf=False) -> tuple[float, list[np.ndarray]]:
    from clustercam_pl.inference.crf import dense_crf

    ds = SyntheticWSSS(split, SyntheticConfig.from_dict(SYN), seed=0)
    metric, preds = SegmentationIoU(5), []
    for i in range(len(ds)):
        item = ds[i]
        probs = direct_probs(net, item["image"][None], scales, flip)
        if crf:
            rgb = make_sample(ds.config, 0, split, i)[0]  # the original pixels, not the de-normalised tensor
            probs = torch.from_numpy(dense_crf(rgb, probs[0].numpy()))[None]
        pred = probs.argmax(1)
        preds.append(pred[0].numpy())
        metric.update(pred, item["mask"][None])
    return float(metric.compute()["miou"]), preds


@pytest.mark.parametrize("protocol,scales,flip", [("ss", (1.0,), False), ("ms_flip", MS, True)])
def test_protocol_matches_direct_computation(protocol, scales, flip, tmp_path, capsys):
    net = tiny_net()
    ckpt = save_framework(net, tmp_path / "last.ckpt")
    summary = evaluate(compose_eval([*DATA, f"ckpt_path={ckpt}", f"eval={protocol}"], tmp_path / "run"))
    expected, _ = direct_miou(net, scales=scales, flip=flip)
    assert summary["miou"] == pytest.approx(expected, abs=1e-6)
    out = capsys.readouterr().out
    assert f"protocol {protocol}: scales [{', '.join(f'{s:g}' for s in scales)}]" in out
    assert ("with horizontal flip" in out) == flip and "no post-processing" in out
    assert f"mIoU {100 * expected:6.2f}" in out and "square/checker" in out
    written = json.loads((tmp_path / "run" / "eval_metrics.json").read_text())
    assert written["miou"] == pytest.approx(expected, abs=1e-6) and written["quoted"] == "last"
    assert written["protocol"] == {"name": protocol, "scales": list(scales), "flip": flip, "postprocess": []}


def test_crf_protocol_matches_dense_crf_on_the_original_pixels(tmp_path, capsys):
    pytest.importorskip("pydensecrf.densecrf", reason="optional dependency pydensecrf2 is not installed")
    net = tiny_net()
    ckpt = save_framework(net, tmp_path / "last.ckpt")
    summary = evaluate(compose_eval([*DATA, f"ckpt_path={ckpt}", "eval=ss_crf"], tmp_path / "run"))
    expected, _ = direct_miou(net, crf=True)
    assert summary["miou"] == pytest.approx(expected, abs=1e-6)
    assert summary["protocol"]["postprocess"] == [{"name": "crf", "n_iter": 10, "gauss_sxy": 4, "gauss_compat": 3,
                                                   "bilat_sxy": 83, "bilat_srgb": 5, "bilat_compat": 3}]
    expected_text = "dense CRF (Gaussian sxy 4 compat 3, bilateral sxy 83 srgb 5 compat 3, 10 iterations)"
    assert expected_text in capsys.readouterr().out


def test_denormalised_image_is_the_decoded_image():
    ds = SyntheticWSSS("val", SyntheticConfig.from_dict(SYN), seed=0)
    for i in range(2):
        np.testing.assert_array_equal(to_uint8_image(ds[i]["image"]), make_sample(ds.config, 0, "val", i)[0])
    far = torch.full((3, 2, 2), 50.0)  # far out of range: clamped to white, not wrapped
    assert (to_uint8_image(far) == 255).all() and (to_uint8_image(-far) == 0).all()


def test_padded_batch_equals_each_image_alone():
    net = tiny_net()
    a, b = torch.randn(1, 3, 64, 96), torch.randn(1, 3, 96, 64)  # >= 32 px at scale 0.5 (one cluster cell)
    batch = torch.zeros(2, 3, 96, 96)
    batch[0, :, :64], batch[1, :, :, :64] = a[0], b[0]
    sizes = torch.tensor([[64, 96], [96, 64]])
    out = predict(net, batch, MS, True, sizes).probs  # (2, 5, 96, 96)
    torch.testing.assert_close(out[0, :, :64], direct_probs(net, a, MS, True)[0])
    torch.testing.assert_close(out[1, :, :, :64], direct_probs(net, b, MS, True)[0])
    assert (out[0, :, 64:] == 0).all() and (out[1, :, :, 64:] == 0).all()


def test_reference_checkpoint_evaluates_like_the_framework_one(tmp_path):
    net = tiny_net()
    fw = save_framework(net, tmp_path / "ours.ckpt")
    ref = tmp_path / "checkpoint_66.pth"
    sd = {"module." + k: v for k, v in ours_to_reference(net.state_dict()).items()}
    torch.save({"model": sd, "epoch": 66}, ref)
    # What shapes cannot tell (the decoder's dilation) comes from net_overrides.
    over = ["+net_overrides.decoder_dilation=1"]
    a = evaluate(compose_eval([*DATA, f"ckpt_path={fw}", "eval=ms"], tmp_path / "a"))
    b = evaluate(compose_eval([*DATA, f"ckpt_path={ref}", "eval=ms", *over], tmp_path / "b"))
    assert b["miou"] == a["miou"]
    assert b["checkpoints"][0]["kind"] == "reference" and b["checkpoints"][0]["epoch"] == 66
    with pytest.raises(ValueError, match=r"^net_overrides \['cam_layers'\] are CAM settings now: pass cam\.cam_layers=\.\.\. instead$"):
        load_checkpoint(ref, cam_layers=2)
    with pytest.raises(ValueError, match=r"ours\.ckpt is a framework checkpoint .*only apply to reference"):
        load_checkpoint(fw, decoder_dilation=1)


def test_several_checkpoints_report_last_and_best(tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for seed, epoch in ((1, 5), (2, 9), (3, 7)):
        save_framework(tiny_net(seed), folder / f"epoch{epoch}.ckpt", epoch=epoch, global_step=10 * epoch)
    (folder / "notes.txt").write_text("not a checkpoint")
    names = [p.name for p in find_checkpoints(str(tmp_path))]  # run folder -> its checkpoints/
    assert names == ["epoch5.ckpt", "epoch7.ckpt", "epoch9.ckpt"]
    assert find_checkpoints(str(folder / "epoch*.ckpt")) == find_checkpoints(str(folder))
    assert [p.name for p in find_checkpoints([str(folder / "epoch9.ckpt"), str(folder / "epoch5.ckpt")])] == [
        "epoch9.ckpt", "epoch5.ckpt"]

    summary = evaluate(compose_eval([*DATA, f"ckpt_path={folder}", "eval=ss"], tmp_path / "run"))
    by_name = {Path(r["path"]).name: r["miou"] for r in summary["checkpoints"]}
    assert len(set(by_name.values())) == 3  # the three networks differ
    best_name = max(by_name, key=by_name.get)
    assert Path(summary["last"]["path"]).name == "epoch9.ckpt"
    assert Path(summary["best"]["path"]).name == best_name
    assert summary["quoted"] == "last" and summary["miou"] == by_name["epoch9.ckpt"]
    out = capsys.readouterr().out
    assert "last: " in out and "best: " in out and "selection on the data that is scored" in out
    assert "quoted: the last checkpoint" in out

    best = evaluate(compose_eval([*DATA, f"ckpt_path={folder}", "eval=ss", "quote=best"], tmp_path / "run2"))
    assert best["quoted"] == "best" and best["miou"] == max(by_name.values())


def test_voc_export_writes_the_server_layout_and_archive(tmp_path):
    net = tiny_net()
    ckpt = save_framework(net, tmp_path / "last.ckpt")
    run = tmp_path / "run"
    over = [*DATA, f"ckpt_path={ckpt}", "eval=ss", "split=test", "export=true"]
    summary = evaluate(compose_eval(over, run))
    folder = run / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls"
    ids = [f"synthetic_test_{i:06d}" for i in range(3)]
    assert sorted(p.name for p in folder.iterdir()) == [f"{i}.png" for i in ids]
    _, preds = direct_miou(net, split="test")
    for image_id, pred in zip(ids, preds, strict=True):
        with Image.open(folder / f"{image_id}.png") as im:
            assert im.mode == "P" and im.getpalette()[:63] == voc_palette(21)
            np.testing.assert_array_equal(np.array(im), pred)
    archive = Path(summary["export_archive"])
    assert archive == run / "comp6_test_results.tar.gz"
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == [f"results/VOC2012/Segmentation/comp6_test_cls/{i}.png" for i in ids]
    assert not list(run.glob("*.part"))

    with pytest.raises(ValueError, match="export=true writes the predictions of one checkpoint"):
        evaluate(compose_eval([*DATA, f"ckpt_path=[{ckpt},{save_framework(net, tmp_path / 'b.ckpt')}]",
                               "eval=ss", "split=test", "export=true"], tmp_path / "run2"))


def test_crf_without_pydensecrf_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    # Refused before anything is read: the checkpoint does not even exist.
    with pytest.raises(ImportError, match=r"pip install 'clustercam_pl\[crf\]'"):
        evaluate(compose_eval([*DATA, f"ckpt_path={tmp_path / 'nope.ckpt'}", "eval=ms_crf"], tmp_path / "r"))


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=.*nope\.ckpt does not exist"):
        find_checkpoints(str(tmp_path / "nope.ckpt"))
    with pytest.raises(FileNotFoundError, match=r"the pattern matches no file"):
        find_checkpoints(str(tmp_path / "*.ckpt"))
    with pytest.raises(FileNotFoundError, match=r"folder has no .ckpt/.pth/.pt files"):
        find_checkpoints(str(tmp_path))
    ckpt = save_framework(tiny_net(), tmp_path / "k4.ckpt")
    with pytest.raises(ValueError, match=r"k4\.ckpt predicts 4 classes but data=synthetic has 3"):
        over = [*DATA, "data.synthetic.num_classes=3", f"ckpt_path={ckpt}", "eval=ss"]
        evaluate(compose_eval(over, tmp_path / "r"))
    with pytest.raises(ValueError, match=r"quote='first' must be 'last' or 'best'"):
        evaluate(compose_eval([*DATA, f"ckpt_path={ckpt}", "quote=first"], tmp_path / "r"))
    (tmp_path / "cut.ckpt").write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"cannot read checkpoint .*cut\.ckpt"):
        load_checkpoint(tmp_path / "cut.ckpt")


@pytest.mark.slow  # every eval protocol file
@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "eval").glob("*.yaml")))
def test_every_protocol_composes(name, tmp_path):
    p = protocol_from_config(compose_eval([f"eval={name}", "ckpt_path=x"], tmp_path).eval)
    assert p.name == name
    assert p.scales == ((1.0,) if name.startswith("ss") else MS)
    assert p.flip == ("flip" in name) and [s.name for s in p.steps] == (["crf"] if name.endswith("crf") else [])


@pytest.mark.slow  # one interpreter start-up: the command line itself is under test
def test_command_line(tmp_path):
    ckpt = save_framework(tiny_net(), tmp_path / "last.ckpt")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    run = tmp_path / "run"
    done = run_command("clustercam_pl.eval", [*DATA, f"ckpt_path={ckpt}", "eval=ms", "limit=2",
                                              f"hydra.run.dir={run}"], REPO, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "protocol ms: scales [0.5, 0.75, 1, 1.25, 1.5]" in done.stdout and "mIoU" in done.stdout
    metrics = json.loads((run / "eval_metrics.json").read_text())
    assert metrics["num_images"] == 2 and metrics["split"] == "val"
    assert (run / "eval.log").is_file()


@pytest.mark.slow  # trains a run (README, Tests: what is slow)
def test_run_folder_of_a_real_training_run(tiny_run, tmp_path):
    """Lightning checkpoints from `train`: the run folder is found, and `ss` on val reproduces the
    decoder mIoU the training run logged (same images, same single-scale argmax)."""
    metrics = tiny_run.summary  # 1 epoch of 4 steps
    data = [o for o in TINY_OVERRIDES if o.startswith("data.")] + ["data=synthetic", "device=cpu"]
    summary = evaluate(compose_eval([*data, f"ckpt_path={tiny_run.folder}", "eval=ss"], tmp_path / "run"))
    names = sorted(Path(r["path"]).name for r in summary["checkpoints"])
    assert "last.ckpt" in names and len(names) >= 2
    assert all(r["kind"] == "framework" and r["global_step"] == 4 for r in summary["checkpoints"])
    last = next(r for r in summary["checkpoints"] if r["path"] == summary["last"]["path"])
    assert last["miou"] == pytest.approx(metrics["val/seg_miou"], abs=1e-6)


def test_reference_fixture_through_the_inference_path(parity_dir, expected):
    """The shared parity fixture (reference outputs on reference-format weights): `load_checkpoint`
    reads the official checkpoint, `ss` prediction is the softmax of the reference's upsampled seg
    logits, and the exported pseudo labels / CAMs are the reference's (eval mode)."""
    ckpt = load_checkpoint(parity_dir / "official_checkpoint.pth")
    assert ckpt.kind == "reference" and ckpt.epoch == 0 and not ckpt.net.training
    image = expected["s1_image"]  # (1, 3, 160, 208): non-square, not the base size
    probs = predict(ckpt.net, image).probs
    seg = F.interpolate(expected["s1_seg_logits"], size=(160, 208), mode="bilinear", align_corners=False)
    torch.testing.assert_close(probs, seg.softmax(1), atol=1e-5, rtol=1e-4)

    cams, pseudo = pseudo_labels_per_image(ckpt.net, PAR(), expected["s0_image"], expected["cls_label"],
                                          CAMConfig(train_mode=False))
    rel = (cams - expected["ms_cam_valid"]).norm() / expected["ms_cam_valid"].norm()
    assert rel < 1e-4
    assert (pseudo == expected["pseudo_label"]).float().mean() > 0.999


def _result_lines(text: str) -> list[str]:
    """The printed result (not the log lines), without the lines naming the processes or the run folder."""
    return [line for line in text.splitlines() if not line.startswith(("[20", "data synthetic", "VOC server"))]


@pytest.mark.slow  # two processes (gloo) through the command line: ~30-60 s of interpreter start-up on 2 cores
def test_two_process_eval_and_export_equal_one_process(tmp_path):
    pytest.importorskip("pydensecrf.densecrf", reason="optional dependency pydensecrf2 is not installed")
    ckpt = save_framework(tiny_net(), tmp_path / "last.ckpt")
    # 5 images: shares of 3 and 2 (a DistributedSampler would pad to 3 + 3 and count one twice).
    data = [*DATA, "data.synthetic.num_val=5", f"ckpt_path={ckpt}", "eval=ss_crf", "export=true"]
    one = evaluate(compose_eval([*data, "crf_workers=0"], tmp_path / "one"))  # CRF in the process
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    two_dir = tmp_path / "two"
    # CRF inline here too (worker pools cost interpreter start-ups; test_distributed checks pool == inline).
    done = run_command("clustercam_pl.eval", [*data, "crf_workers=0", "trainer=ddp", "trainer.accelerator=cpu",
                                              "trainer.devices=2", f"hydra.run.dir={two_dir}"], REPO, env, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    two = json.loads((two_dir / "eval_metrics.json").read_text())
    assert two["processes"] == 2 and two["crf_workers"] == 0 and one["processes"] == 1
    assert two["checkpoints"][0]["images"] == 5 and two["checkpoints"][0]["images_per_process"] == [3, 2]
    assert one["checkpoints"][0]["images_per_process"] == [5]
    assert two["miou"] == pytest.approx(one["miou"], abs=1e-7)
    assert two["per_class_iou"] == pytest.approx(one["per_class_iou"], abs=1e-7, nan_ok=True)
    # Printed once, by the main process; the same result as one process.
    assert done.stdout.count("data synthetic, split val, 5 images, device cpu x 2 processes\n") == 1
    assert _result_lines(done.stdout) == _result_lines(report(one))
    # The VOC export: every image's PNG once, the same as one process's, packed once.
    rel = Path("results/VOC2012/Segmentation/comp6_val_cls")
    ids = [f"synthetic_val_{i:06d}" for i in range(5)]
    assert sorted(p.name for p in (two_dir / rel).iterdir()) == [f"{i}.png" for i in ids]
    for i in ids:
        with Image.open(two_dir / rel / f"{i}.png") as a, Image.open(tmp_path / "one" / rel / f"{i}.png") as b:
            np.testing.assert_array_equal(np.array(a), np.array(b))
    with tarfile.open(two_dir / "comp6_val_results.tar.gz") as tar:
        assert sorted(tar.getnames()) == [str(rel / f"{i}.png") for i in ids]
    env_json = json.loads((two_dir / "env.json").read_text())
    assert env_json["world_size"] == 2


@pytest.mark.slow  # one interpreter start-up
def test_script_ddp_inside_basic_multirun_is_refused(tmp_path):
    ckpt = save_framework(tiny_net(), tmp_path / "last.ckpt")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    done = run_command("clustercam_pl.eval", ["-m", *DATA, f"ckpt_path={ckpt}", "eval=ss,ms", "trainer=ddp",
                                              "trainer.accelerator=cpu", f"hydra.sweep.dir={tmp_path}/s"], REPO, env)
    assert done.returncode != 0
    assert "re-launches the sweep in every rank. Use trainer=ddp_spawn" in done.stdout + done.stderr


def test_export_of_a_split_whose_ids_are_paths(tmp_path, monkeypatch):
    """Issue 24: image ids with folders (a folder dataset's `batch_a/img_001`) are scored, exported into
    sub-folders, packed, and the metrics are written."""
    monkeypatch.setattr(SyntheticWSSS, "item_id", lambda self, i: f"batch_{'ab'[i % 2]}/img_{i:03d}")
    net = tiny_net()
    ckpt = save_framework(net, tmp_path / "last.ckpt")
    run = tmp_path / "run"
    summary = evaluate(compose_eval([*DATA, f"ckpt_path={ckpt}", "eval=ss", "export=true"], run))
    expected, preds = direct_miou(net)
    assert summary["miou"] == pytest.approx(expected, abs=1e-6)
    ids = [f"batch_{'ab'[i % 2]}/img_{i:03d}" for i in range(4)]
    folder = run / "results" / "VOC2012" / "Segmentation" / "comp6_val_cls"
    for image_id, pred in zip(ids, preds, strict=True):
        with Image.open(folder / f"{image_id}.png") as im:
            np.testing.assert_array_equal(np.array(im), pred)
    with tarfile.open(summary["export_archive"]) as tar:
        assert sorted(tar.getnames()) == sorted(f"results/VOC2012/Segmentation/comp6_val_cls/{i}.png" for i in ids)
    written = json.loads((run / "eval_metrics.json").read_text())
    assert written["miou"] == pytest.approx(expected, abs=1e-6)
    assert written["export_archive"] == summary["export_archive"]


def test_a_postprocess_step_is_one_config_entry(tmp_path):
    """Any registered step joins a protocol from the command line (`+postprocess@eval.postprocess.<key>=<name>`)
    or as a list of step configs; settings of a protocol's step change with `eval.postprocess.<key>.<field>`."""
    added = compose_eval(["eval=ss", "ckpt_path=x", "+postprocess@eval.postprocess.crf=crf",
                          "eval.postprocess.crf.n_iter=4"], tmp_path)
    assert protocol_from_config(added.eval).as_dict()["postprocess"] == [
        {"name": "crf", "n_iter": 4, "gauss_sxy": 4, "gauss_compat": 3, "bilat_sxy": 83, "bilat_srgb": 5,
         "bilat_compat": 3}]
    listed = compose_eval(["eval=ss", "ckpt_path=x", "~eval.postprocess", "+eval.postprocess=[{name:crf,n_iter:4}]"],
                          tmp_path)
    assert protocol_from_config(listed.eval) == protocol_from_config(added.eval)


def test_a_label_step_of_the_refine_command_runs_inside_eval(tmp_path):
    """The refinement steps (issue 20) are post-processing steps like the CRF: `superpixel` joins `eval`
    from the command line and changes the label maps it scores (a vote over SLIC regions)."""
    ckpt = save_framework(make_tiny_net(), tmp_path / "k.ckpt")
    plain = evaluate(compose_eval([*DATA, f"ckpt_path={ckpt}", "eval=ss"], tmp_path / "plain"))
    voted = evaluate(compose_eval([*DATA, f"ckpt_path={ckpt}", "eval=ss", "crf_workers=0",
                                   "+postprocess@eval.postprocess.sp=superpixel",
                                   "eval.postprocess.sp.n_segments=8"], tmp_path / "voted"))
    assert [s["name"] for s in voted["protocol"]["postprocess"]] == ["superpixel"]
    assert voted["num_images"] == plain["num_images"] == 4
    assert 0.0 <= voted["miou"] <= 1.0 and voted["miou"] != plain["miou"]
