"""Training end to end on the synthetic set: metrics, checkpoints, resume, failures, DDP, sweeps."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose
from omegaconf import open_dict, read_write

from clustercam_pl.lit_module import NonFiniteLossError
from clustercam_pl.models import ClusterCAMNet
from clustercam_pl.optim import OptimConfig, lr_at
from clustercam_pl.train import train
from helpers import TINY_OVERRIDES, compose_train, hydra_config

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
       "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}


def run_cli(args: list[str], cwd: Path, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clustercam_pl.train", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout, **kw)


def test_synthetic_run_writes_metrics_and_checkpoints(tiny_run):
    metrics = json.loads((tiny_run.folder / "metrics.json").read_text())
    for key in ("val/seg_miou", "val/pseudo_miou", "val/map"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["global_step"] == 4 == tiny_run.summary["global_step"]  # 1 epoch x 16 images / batch 4
    assert set(metrics["per_class_iou"]) == {"background", "disc/stripes", "square/checker", "triangle/dots", "ring/noise"}
    ckpt = torch.load(tiny_run.last, map_location="cpu", weights_only=True)
    assert ckpt["clustercam"]["format"] == 2 and ckpt["global_step"] == 4
    assert ckpt["clustercam"]["class_names"] == ["disc/stripes", "square/checker", "triangle/dots", "ring/noise"]
    assert ckpt["hyper_parameters"]["cam"]["cam_layers"] == 2 and "cam_layers" not in ckpt["clustercam"]["net_config"]
    # every_n_train_steps=2: the step checkpoint of step 4 replaced step 2's (save_top_k=1).
    names = sorted(p.name for p in (tiny_run.folder / "checkpoints").iterdir())
    assert names == ["best-epoch000.ckpt", "last.ckpt", "step-0000004.ckpt"]
    assert (tiny_run.folder / "config.yaml").is_file()


def test_per_step_schedule_follows_epochs_when_max_steps_cuts_the_run(tmp_path):
    # 16 images / batch 4 = 4 steps per epoch; max_steps=5 stops in epoch 2 of 4. The learning rate
    # after step 5 must be the per-epoch curve at epoch 5/4, not stretched over 5 steps / 4 epochs.
    cfg = compose_train([*TINY_OVERRIDES, "trainer.max_epochs=4", "trainer.max_steps=5", "optim.interval=step",
                         "optim.warmup_epochs=1"], output_dir=tmp_path)
    train(cfg)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    optim = OptimConfig(**{k: v for k, v in cfg.optim.items() if k != "_target_"})
    base = optim.base_lr(4)
    expected = lr_at(5 / 4, base, 4, optim)
    assert ckpt["global_step"] == 5
    assert ckpt["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(expected, rel=1e-9)
    # The old derivation: int(5 estimated steps / 4 epochs) = 1 step per epoch, so step 5 was "epoch 5".
    assert expected != pytest.approx(lr_at(5.0, base, 4, optim), rel=1e-3)


@pytest.mark.slow  # Dynamo's graph capture of the network parts: the slowest training of the unit tests
def test_model_compile_option_compiles_the_network_and_trains(tmp_path, monkeypatch):
    # `model.compile=true` compiles once, before training, and the run trains through the compiled
    # modules. Dynamo's `eager` backend keeps it fast (graph capture, no code generation);
    # tests/models/test_network.py checks inductor's numbers.
    calls = []
    original = ClusterCAMNet.compile_parts
    monkeypatch.setattr(ClusterCAMNet, "compile_parts",
                        lambda self, **kw: calls.append(kw) or original(self, backend="eager"))
    cfg = compose_train([*TINY_OVERRIDES, "model.compile=true", "trainer.max_epochs=1", "model.seg_start_epoch=0",
                         "data.synthetic.num_train=8"], output_dir=tmp_path)
    summary = train(cfg)
    assert calls == [{}] and summary["global_step"] == 2
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["compile"] is True
    assert not any("_orig_mod" in k for k in ckpt["state_dict"])


def test_checkpoint_rebuilds_the_network_without_configs(tiny_run):
    from clustercam_pl.checkpoint import net_from_framework, read_file
    from clustercam_pl.lit_module import module_from_checkpoint

    path = tiny_run.last
    net = net_from_framework(read_file(path), str(path))
    assert net.num_classes == 4 and net.backbone.embed_dim == 32
    # The whole module, with the run's CAM settings, for analysis (the notebook's loader).
    module = module_from_checkpoint(path)
    assert not module.training and module.cam_cfg.par_iters == 2 and module.hparams.seg_start_epoch == 1
    for a, b in zip(module.net.state_dict().values(), net.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_newer_checkpoint_format_is_refused(tmp_path):
    from clustercam_pl.checkpoint import net_from_framework

    with pytest.raises(ValueError, match=r"x\.ckpt has checkpoint format 99, newer than this clustercam_pl reads"):
        net_from_framework({"clustercam": {"format": 99, "net_config": {}}, "state_dict": {}}, "x.ckpt")


def test_non_finite_loss_stops_with_step_and_terms(tmp_path, monkeypatch):
    import clustercam_pl.lit_module as lm

    real = lm.ClusterCAMLoss.forward

    def poisoned(self, *args, **kw):
        out = real(self, *args, **kw)
        out["cls"] = out["cls"] * float("nan")
        out["total"] = out["total"] + out["cls"]
        return out

    monkeypatch.setattr(lm.ClusterCAMLoss, "forward", poisoned)
    cfg = compose_train(TINY_OVERRIDES, output_dir=tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch 0, global step 0: cls=nan, patch=[0-9.]+, total=nan"):
        train(cfg)
    assert (tmp_path / "checkpoints" / "nonfinite-step0.ckpt").is_file()


@pytest.mark.slow
def test_resume_at_epoch_boundary_equals_uninterrupted_run(tmp_path):
    # The interrupted part stops by max_steps at the end of epoch 0 with the same max_epochs (the
    # schedule depends on it), and saves its checkpoint at the epoch end.
    over = [*TINY_OVERRIDES, "trainer.max_epochs=2", "callbacks.step_checkpoint.every_n_train_steps=0",
            "+callbacks.step_checkpoint.every_n_epochs=1", "optim.interval=epoch"]
    straight = train(compose_train(over, output_dir=tmp_path / "a"))
    train(compose_train([*over, "trainer.max_steps=4"], output_dir=tmp_path / "b"))
    resumed = train(compose_train(over, output_dir=tmp_path / "b"))  # ckpt_path=auto finds last.ckpt
    assert straight["global_step"] == resumed["global_step"] == 8
    a = torch.load(tmp_path / "a/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=lambda m, k=k: f"{k}: {m}")


def start_cli(args: list[str]) -> subprocess.Popen:
    """A training run in the background, stdout and stderr merged, to interrupt with a signal."""
    return subprocess.Popen([sys.executable, "-m", "clustercam_pl.train", *args], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    t = time.time()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before {path} appeared:\n{proc.stdout.read()}")
        if time.time() - t > timeout:
            proc.kill()
            raise AssertionError(f"{path} did not appear in {timeout}s")
        time.sleep(0.2)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_reaches_planned_steps(tmp_path, caplog):
    run = tmp_path / "run"
    over = [*TINY_OVERRIDES, "data.synthetic.num_train=1200", "trainer.max_epochs=2",
            "callbacks.step_checkpoint.every_n_train_steps=3"]
    proc = start_cli([*over, f"hydra.run.dir={run}"])
    last = run / "checkpoints" / "last.ckpt"
    _wait_for(last, proc, 240)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)  # mid-epoch: 300 steps per epoch
    proc.wait(30)
    saved = torch.load(last, weights_only=True)["global_step"]
    assert 3 <= saved < 300
    # The resume runs in this process and stops 4 steps past the checkpoint: what is under test is that
    # it continues from the killed run's last.ckpt to its planned steps, not the rest of the 600 steps.
    with caplog.at_level(logging.INFO, logger="clustercam_pl"):
        summary = train(compose_train([*over, f"trainer.max_steps={saved + 4}"], output_dir=run))
    assert f"resuming from {last}" in caplog.text
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == summary["global_step"] == saved + 4
    assert torch.load(last, weights_only=True)["global_step"] == saved + 4


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly_then_resumes(tmp_path):
    run = tmp_path / "run"
    args = [*TINY_OVERRIDES, "data.synthetic.num_train=1200", "trainer.max_epochs=2",
            "callbacks.step_checkpoint.every_n_train_steps=5", f"hydra.run.dir={run}"]
    proc = start_cli(args)
    _wait_for(run / "checkpoints" / "last.ckpt", proc, 240)  # step 5 was saved: training is stepping (load varies)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "SIGTERM: saved" in out
    step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 0 < step < 600
    done = run_cli(args, REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 600


@pytest.mark.slow
@pytest.mark.timeout(600)  # the command line may take its 400 s on a loaded machine
def test_ddp_two_cpu_processes(tmp_path):
    run = tmp_path / "run"
    done = run_cli([*TINY_OVERRIDES, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                    "trainer.max_epochs=1", f"hydra.run.dir={run}"], REPO, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 4  # 16 images over 2 ranks, global batch 4 = 2 per rank: 4 steps
    env = json.loads((run / "env.json").read_text())  # written once, by rank 0
    assert env["world_size"] == 2 and env["batch"]["per_device"] == 2 and env["batch"]["global"] == 4


def test_ddp_inside_basic_multirun_is_refused(tmp_path):
    """`check_multirun_strategy` in a composed multirun config; test_eval.py runs the same refusal
    through a real `-m` command line."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from clustercam_pl.entry import check_multirun_strategy

    def multirun(*overrides: str, mode: RunMode = RunMode.MULTIRUN):
        """The job config as Hydra hands it to the task function, HydraConfig set."""
        with hydra_config():
            cfg = compose("train", overrides=[*TINY_OVERRIDES, "trainer.accelerator=cpu", *overrides],
                          return_hydra_config=True)
        with read_write(cfg), open_dict(cfg):
            cfg.hydra.mode = mode
            cfg.paths.output_dir = str(tmp_path)
        HydraConfig.instance().set_config(cfg)
        return cfg

    try:
        with pytest.raises(ValueError, match=r"trainer\.strategy=ddp inside a --multirun sweep with the basic launcher "
                           r"re-launches the sweep in every rank\. Use trainer=ddp_spawn"):
            train(multirun("trainer=ddp", "trainer.devices=2"))  # refused before anything is built
        assert not list(tmp_path.iterdir())
        with pytest.raises(ValueError, match=r"with the joblib launcher re-launches the sweep in every rank"):
            check_multirun_strategy(multirun("trainer=ddp", "trainer.devices=2", "hydra/launcher=joblib"))
        for allowed in (["trainer=ddp_spawn", "trainer.devices=2"], ["trainer=ddp", "trainer.devices=1"],
                        ["trainer=ddp", "trainer.devices=2", "hydra/launcher=submitit_slurm"]):
            check_multirun_strategy(multirun(*allowed))
        # One run: Lightning's re-launch of the script is the intended DDP.
        check_multirun_strategy(multirun("trainer=ddp", "trainer.devices=2", mode=RunMode.RUN))
    finally:
        HydraConfig.instance().cfg = None
