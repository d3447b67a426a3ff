"""Training end to end on the synthetic set: metrics, checkpoints, resume, failures, DDP, sweeps."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from hydra import compose
from omegaconf import open_dict, read_write

from clustercam_pl.checkpoint import FORMAT
from clustercam_pl.lit_module import NonFiniteLossError
from clustercam_pl.models import ClusterCAMNet
from clustercam_pl.optim import OptimConfig, lr_at
from clustercam_pl.train import train
from clustercam_pl.utils.run_folder import RunFolderLock
from helpers import TINY_OVERRIDES, compose_train, hydra_config, run_command

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
       "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}
# Runs that load tests/preemption.py's callback by its Hydra `_target_`.
ENV_TESTS = {**ENV, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "tests"), ENV.get("PYTHONPATH")) if p)}


def run_cli(args: list[str], cwd: Path, timeout: float = 300, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
    """`python -m clustercam_pl.train *args`, a process of its own (helpers.run_command)."""
    return run_command("clustercam_pl.train", args, cwd, env or ENV, timeout)


@pytest.mark.slow  # trains a run (README, Tests: what is slow)
def test_synthetic_run_writes_metrics_and_checkpoints(tiny_run):
    metrics = json.loads((tiny_run.folder / "metrics.json").read_text())
    for key in ("val/seg_miou", "val/pseudo_miou", "val/map"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["global_step"] == 4 == tiny_run.summary["global_step"]  # 1 epoch x 16 images / batch 4
    assert set(metrics["per_class_iou"]) == {"background", "disc/stripes", "square/checker", "triangle/dots", "ring/noise"}
    ckpt = torch.load(tiny_run.last, map_location="cpu", weights_only=True)
    assert ckpt["clustercam"]["format"] == FORMAT and ckpt["global_step"] == 4
    assert ckpt["clustercam"]["class_names"] == ["disc/stripes", "square/checker", "triangle/dots", "ring/noise"]
    assert ckpt["hyper_parameters"]["cam"]["cam_layers"] == 2 and "cam_layers" not in ckpt["clustercam"]["net_config"]
    assert "net" not in ckpt["hyper_parameters"] and ckpt["clustercam"]["net_config"]["embed_dim"] == 32  # stored once
    # every_n_train_steps=2: the step checkpoint of step 4 replaced step 2's (save_top_k=1).
    names = sorted(p.name for p in (tiny_run.folder / "checkpoints").iterdir())
    assert names == ["best-epoch000.ckpt", "last.ckpt", "step-0000004.ckpt"]
    assert (tiny_run.folder / "config.yaml").is_file()


@pytest.mark.slow  # trains a run (README, Tests: what is slow)
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
    # modules. Dynamo's `eager` backend keeps it fast (graph capture, no code generation), and one graph
    # per code object (each further input size or grad mode would be traced again, ~4 s each; past the limit
    # Dynamo runs them eager); tests/models/test_clustercam.py checks inductor's numbers and recompiles.
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    calls = []
    original = ClusterCAMNet.compile_parts
    monkeypatch.setattr(ClusterCAMNet, "compile_parts",
                        lambda self, **kw: calls.append(kw) or original(self, backend="eager"))
    cfg = compose_train([*TINY_OVERRIDES, "model.compile=true", "trainer.max_epochs=1", "model.seg_start_epoch=0",
                         "data.synthetic.num_train=8"], output_dir=tmp_path)
    torch._dynamo.reset()  # no graphs of earlier tests in this process: they would count against the limit
    torch._dynamo.utils.counters.clear()
    summary = train(cfg)
    assert calls == [{}] and summary["global_step"] == 2
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 3  # backbone, head and decoder traced
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["compile"] is True
    assert not any("_orig_mod" in k for k in ckpt["state_dict"])


@pytest.mark.slow  # trains a run (README, Tests: what is slow)
def test_checkpoint_rebuilds_the_network_without_configs(tiny_run, tmp_path):
    from clustercam_pl.checkpoint import load_checkpoint
    from clustercam_pl.lit_module import module_from_checkpoint

    path = tiny_run.last
    net = load_checkpoint(path).net
    assert net.cfg.num_classes == 4 and net.cfg.embed_dim == 32
    # The whole module, with the run's CAM settings, for analysis (the notebook's loader).
    module = module_from_checkpoint(path)
    assert not module.training and module.cam_cfg.par_iters == 2 and module.hparams.seg_start_epoch == 1
    for a, b in zip(module.net.state_dict().values(), net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # Hyper-parameters as earlier versions stored them: ignore_index 255, cam_bg -1 ("the mean"), lr 0 ("derive it").
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]
    hp["cam"] |= {"ignore_index": 255, "cam_bg": -1.0}
    hp["optim"] |= {"lr": 0.0}
    torch.save(ckpt, tmp_path / "old.ckpt")
    old = module_from_checkpoint(tmp_path / "old.ckpt")
    assert old.cam_cfg == module.cam_cfg and old.cam_cfg.cam_bg is None and old.optim_cfg.lr is None
    hp["cam"]["ignore_index"] = 0
    torch.save(ckpt, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=r"other\.ckpt was trained with cam\.ignore_index=0; "):
        module_from_checkpoint(tmp_path / "other.ckpt")


def test_newer_checkpoint_format_is_refused(tmp_path):
    from clustercam_pl.checkpoint import load_checkpoint

    path = tmp_path / "x.ckpt"
    torch.save({"clustercam": {"format": 99, "net_config": {}}, "state_dict": {}}, path)
    with pytest.raises(ValueError, match=r"x\.ckpt has checkpoint format 99, newer than this clustercam_pl reads"):
        load_checkpoint(path)


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


# Preemption: the run signals itself at a chosen point (tests/preemption.py), so what it saved is known
# exactly, whatever the load; the resume runs two steps past the save, not the whole plan.
PREEMPT = [*TINY_OVERRIDES, "callbacks.step_checkpoint.every_n_train_steps=2"]


def signal_at(where: str, step: int, signame: str = "SIGTERM") -> list[str]:
    return ["+callbacks.preempt._target_=preemption.SignalAt", f"+callbacks.preempt.where={where}",
            f"+callbacks.preempt.step={step}", f"+callbacks.preempt.signame={signame}"]


# 4 steps per epoch, validation after steps 4 and 8, step checkpoints (and last.ckpt) every 2 steps.
SIGTERM_POINTS = [
    ("batch", 2, 3),  # arrives in the batch from step 2 to 3: saved after that batch
    ("validation", 4, 4),  # in the first validation, before its last batch
    ("save", 2, 2),  # inside the step checkpoint's save at step 2
]


@pytest.mark.slow  # trains a run (README, Tests: what is slow)
@pytest.mark.parametrize("where,step,saved", SIGTERM_POINTS, ids=[p[0] for p in SIGTERM_POINTS])
def test_sigterm_saves_where_the_run_stops_then_resumes(where, step, saved, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    with pytest.raises(SystemExit) as stop:
        train(compose_train([*PREEMPT, *signal_at(where, step)], output_dir=tmp_path))
    assert stop.value.code in (None, 0)  # a clean exit: SLURM requeues, the rerun resumes
    last = tmp_path / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == saved
    assert f"SIGTERM: saved {last} at step {saved}; rerun the same command to resume" in caplog.text
    assert not (tmp_path / "metrics.json").exists()  # stopped, not finished
    caplog.clear()
    resumed = train(compose_train([*PREEMPT, f"trainer.max_steps={saved + 2}"], output_dir=tmp_path))
    assert f"resuming from {last}" in caplog.text
    assert resumed["global_step"] == saved + 2
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == saved + 2


@pytest.mark.slow
def test_sigterm_to_the_command_exits_cleanly_after_saving(tmp_path):
    # The command line's own exit: status 0 and the message, through Hydra and the real signal handler.
    run = tmp_path / "run"
    done = run_cli([*PREEMPT, *signal_at("batch", 2), f"hydra.run.dir={run}"], REPO, env=ENV_TESTS)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert f"SIGTERM: saved {run / 'checkpoints' / 'last.ckpt'} at step 3" in out
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    assert not (run / "metrics.json").exists()


@pytest.mark.slow
def test_sigkill_then_resume_from_the_last_step_checkpoint(tmp_path, caplog):
    # SIGKILL cannot be handled: the run resumes from the step checkpoint before it (every 2 steps).
    # The killed run is a process of its own (not a fork of this one: a forked child cannot run autograd
    # once this process's autograd threads exist, pytorch/pytorch wiki "Autograd and Fork"); the resume runs here.
    run = tmp_path / "run"
    killed = run_cli([*PREEMPT, *signal_at("batch", 5, "SIGKILL"), f"hydra.run.dir={run}"], REPO, env=ENV_TESTS)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    last = run / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 4
    caplog.set_level(logging.INFO)
    train(compose_train([*PREEMPT, "trainer.max_steps=6"], output_dir=run))
    assert f"resuming from {last}" in caplog.text
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 6


@pytest.mark.slow
def test_refused_second_training_leaves_the_first_ones_hydra_files(tmp_path):
    # Hydra used to write .hydra/ before the run folder's lock was taken: now the training writes it
    # once the folder is its own, so a second training on a busy folder changes none of its bytes.
    run = tmp_path / "run"
    first = run_cli([*TINY_OVERRIDES, "trainer.max_steps=1", f"hydra.run.dir={run}"], REPO)
    assert first.returncode == 0, first.stdout + first.stderr
    files = {p.name: p.read_bytes() for p in (run / ".hydra").iterdir()}
    assert set(files) == {"config.yaml", "hydra.yaml", "overrides.yaml"}
    assert b"trainer.max_steps=1" in files["overrides.yaml"] and b"max_steps: 1" in files["config.yaml"]
    with RunFolderLock(run):  # as if the first training were still running
        second = run_cli([*TINY_OVERRIDES, "trainer.max_steps=2", "seed=5", f"hydra.run.dir={run}"], REPO)
    assert second.returncode != 0
    assert f"run folder {run} is in use by another training (pid {os.getpid()} " in second.stdout + second.stderr
    assert {p.name: p.read_bytes() for p in (run / ".hydra").iterdir()} == files


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
