"""Refinement of label sets measured, not assumed: oracle segments must help, noise must not wreck,
and a run cut short completes on rerun. (Named test_refine_labels: tests/cam/test_refine.py exists.)"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from clustercam_pl.inference.steps import build_step
from clustercam_pl.inference.steps.segments import encode_masks
from clustercam_pl.inference.steps.superpixel import SuperpixelStep
from clustercam_pl.tasks.audit import convention, void_confmat
from clustercam_pl.tasks.refine import refine_labels
from clustercam_pl.utils.files import partial_path, write_json
from helpers import fork_process
from label_fixtures import synthetic_dm, truth, write_export


def miou(folder: Path, data: dict) -> float:
    """mIoU (void excluded) of the PNGs in ``folder``/labels against the masks, counted here."""
    cm = sum(convention(void_confmat(np.asarray(Image.open(folder / "labels" / f"{i}.png")), m, 4), "excluded")
             for i, (_, m) in data.items())
    iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    return float(np.nanmean(iou))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("refine")
    dm = synthetic_dm(num_val=8)
    data = truth(dm)
    return dm, data, write_export(root / "export", data)


def write_segments(folder: Path, data: dict, make) -> Path:
    folder.mkdir(parents=True)
    for image_id, (_, mask) in data.items():
        write_json(folder / f"{image_id}.json", encode_masks(make(mask)))
    return folder


def oracle(mask: np.ndarray) -> np.ndarray:
    """The true regions: each connected component of each class, background included."""
    regions = []
    for c in np.unique(mask):
        comps, n = ndimage.label(mask == c)
        regions += [comps == i for i in range(1, n + 1)]
    return np.stack(regions)


def noise(mask: np.ndarray, seed: int = 0) -> np.ndarray:
    """Random rectangles that know nothing of the image."""
    rng = np.random.default_rng(seed + int(mask.sum()))
    h, w = mask.shape
    out = np.zeros((12, h, w), bool)
    for m in out:
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        m[y: y + rng.integers(4, h - y), x: x + rng.integers(4, w - x)] = True
    return out


def test_oracle_segments_raise_the_score_and_noise_does_not_collapse_it(setup, tmp_path):
    dm, data, export = setup
    before = miou(export, data)
    step = build_step({"name": "segments", "root": str(write_segments(tmp_path / "oracle", data, oracle))})
    refine_labels(dm, "val", export, [step], tmp_path / "o", progress=False)
    after = miou(tmp_path / "o", data)
    assert after > before + 0.1, (before, after)  # the damage (dilation, void band, salt) is undone
    step = build_step({"name": "segments", "root": str(write_segments(tmp_path / "noise", data, noise))})
    refine_labels(dm, "val", export, [step], tmp_path / "n", progress=False)
    noisy = miou(tmp_path / "n", data)
    assert noisy > before - 0.05, (before, noisy)  # a rectangle straddling an object and background stays as it was
    loose = build_step({"name": "segments", "root": str(tmp_path / "noise"), "threshold": 0.0})
    refine_labels(dm, "val", export, [loose], tmp_path / "loose", progress=False)
    assert miou(tmp_path / "loose", data) < before - 0.1  # a plurality vote lets noise wreck the labels


def test_superpixel_end_to_end_resumes_after_a_crash(setup, tmp_path, monkeypatch):
    dm, data, export = setup
    step = build_step({"name": "superpixel", "n_segments": 60})
    real, calls = SuperpixelStep.__call__, []

    def crash_at_third(self, sample):  # the run is killed while it refines the third image
        calls.append(sample.key)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, sample)

    out = tmp_path / "sp"
    with monkeypatch.context() as m:
        m.setattr(SuperpixelStep, "__call__", crash_at_third)
        with pytest.raises(KeyboardInterrupt):
            refine_labels(dm, "val", export, [step], out, progress=False)
    done = sorted(p.name for p in (out / "labels").glob("*.png"))
    assert len(done) == 2 and not list((out / "labels").glob(".*"))  # no half-written file under any name
    dead = partial_path(out / "labels" / "x.png", pid=2**30)  # a partial of a writer that no longer runs
    dead.write_bytes(b"half")
    summary = refine_labels(dm, "val", export, [step], out, progress=False)
    assert (summary["computed"], summary["resumed"]) == (len(data) - 2, 2)
    assert not dead.exists()
    fresh = refine_labels(dm, "val", export, [step], tmp_path / "fresh", progress=False)
    assert fresh["computed"] == len(data)
    for image_id in data:
        a = np.asarray(Image.open(out / "labels" / f"{image_id}.png"))
        assert np.array_equal(a, np.asarray(Image.open(tmp_path / "fresh" / "labels" / f"{image_id}.png")))
    assert json.loads((out / "refine_summary.json").read_text())["images_per_s"] > 0
    other = build_step({"name": "superpixel", "n_segments": 30})
    with pytest.raises(ValueError, match=r"holds refine outputs made with .*steps: stored .*n_segments.*overwrite=true"):
        refine_labels(dm, "val", export, [other], out, progress=False)
    with pytest.raises(ValueError, match=r"out_dir=.* is the label folder itself"):
        refine_labels(dm, "val", export, [step], export, progress=False)



@pytest.mark.slow  # end to end: three commands
def test_commands_export_refine_audit(tmp_path):
    """`clustercam_pl.refine ... audit=true` and `clustercam_pl.audit` as configured (conf/refine.yaml, conf/audit.yaml)."""
    from hydra import compose
    from hydra.utils import instantiate

    from clustercam_pl.audit import run_audit
    from clustercam_pl.refine import run_refine
    from helpers import hydra_config

    data = ["data=synthetic", "data.synthetic.num_val=4", "data.synthetic.image_size=48"]
    with hydra_config():
        cfg = compose("refine", overrides=[*data, f"labels={tmp_path / 'export'}", "postprocess=superpixel",
                                           "postprocess.n_segments=40", "audit=true", "n_examples=1"])
        acfg = compose("audit", overrides=[*data, f"labels={tmp_path / 'export'}", f"out_dir={tmp_path / 'a'}",
                                           "cams=false"])
    write_export(tmp_path / "export", truth(instantiate(cfg.data, _convert_="all")))
    summary = run_refine(cfg)
    out = tmp_path / "export_superpixel"  # the default out_dir
    assert summary["num_images"] == 4 and len(list((out / "labels").glob("*.png"))) == 4
    assert summary["split"] == "val"  # from the export's meta.json
    report = json.loads((out / "audit" / "audit.json").read_text())
    assert report["labels"] == [str(tmp_path / "export"), str(out)] and "delta" in report
    assert (out / "audit" / "changes.png").is_file() or not (report["changes"]["gained"] or report["changes"]["lost"])
    assert run_audit(acfg)["num_images"] == 4 and not (tmp_path / "a" / "cam_curve.png").exists()


@pytest.mark.slow
def test_two_processes_write_what_one_does(tmp_path):
    """refine and audit on 2 CPU processes (gloo): the same label files and the same audit numbers.
    The processes are forks of this one (`ddp_fork`, no new interpreter); the script launcher of
    `trainer=ddp` is tested through the command line by test_eval.py::test_two_process_eval_and_export_equal_one_process."""
    from hydra import compose
    from hydra.utils import instantiate

    from clustercam_pl.audit import run_audit
    from clustercam_pl.refine import run_refine
    from helpers import hydra_config

    data = ["data=synthetic", "data.synthetic.num_val=5", "data.synthetic.image_size=48", f"paths.output_dir={tmp_path}"]
    two = ["trainer=ddp", "trainer.strategy=ddp_fork", "trainer.accelerator=cpu", "trainer.devices=2"]
    cfgs = {}
    with hydra_config():
        for n, extra in (("one", []), ("two", two)):
            cfgs[n] = (compose("refine", overrides=[*data, *extra, f"labels={tmp_path / 'export'}", "device=cpu",
                                                    f"out_dir={tmp_path / n}", "postprocess.n_segments=40"]),
                       compose("audit", overrides=[*data, *extra, f"labels={tmp_path / 'export'}",
                                                   f"against={tmp_path / n}", f"out_dir={tmp_path / n / 'audit'}"]))
    write_export(tmp_path / "export", truth(instantiate(cfgs["one"][0].data, _convert_="all")))
    reports = {}
    for n, (refine_cfg, audit_cfg) in cfgs.items():
        assert run_refine(refine_cfg)["computed"] == 5
        reports[n] = run_audit(audit_cfg)
    for key in ("sets", "cam_curve", "num_images"):  # as JSON: NaN (a class with no score) equals NaN there
        assert json.dumps(reports["two"][key], sort_keys=True) == json.dumps(reports["one"][key], sort_keys=True), key
    for png in (tmp_path / "one" / "labels").glob("*.png"):
        assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(tmp_path / "two" / "labels" / png.name)))


def _killed_run(export: Path, out: Path) -> None:
    """refine_labels slowed down enough to be killed in the middle of the run (in a forked process)."""
    real = SuperpixelStep.__call__

    def slow(self, sample):
        time.sleep(0.3)
        return real(self, sample)

    SuperpixelStep.__call__ = slow  # only in the forked process
    refine_labels(synthetic_dm(num_val=8), "val", export, [build_step({"name": "superpixel", "n_segments": 60})],
                  out, progress=False)


@pytest.mark.slow
def test_sigkill_then_rerun_leaves_complete_files(setup, tmp_path):
    """A refinement SIGKILLed mid-run (a real process: a fork of this one) is completed by a rerun that
    computes only the missing images, leaves no partial file, and writes what a fresh run writes."""
    dm, data, export = setup
    out = tmp_path / "killed"
    proc = fork_process(_killed_run, export, out)
    deadline = time.monotonic() + 120
    while len(list((out / "labels").glob("*.png"))) < 2 and time.monotonic() < deadline and proc.is_alive():
        time.sleep(0.05)
    proc.kill()  # SIGKILL
    proc.join()
    done = len(list((out / "labels").glob("*.png")))
    assert 2 <= done < len(data), "the run was not killed in the middle"
    step = build_step({"name": "superpixel", "n_segments": 60})
    summary = refine_labels(dm, "val", export, [step], out, progress=False)
    assert (summary["computed"], summary["resumed"]) == (len(data) - done, done)
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")]
    refine_labels(dm, "val", export, [step], tmp_path / "fresh", progress=False)
    for image_id in data:
        a = np.asarray(Image.open(out / "labels" / f"{image_id}.png"))
        assert np.array_equal(a, np.asarray(Image.open(tmp_path / "fresh" / "labels" / f"{image_id}.png")))
