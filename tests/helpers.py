"""Config helpers shared by the training tests."""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict
from torch import Tensor

from clustercam_pl.checkpoint import framework_section
from clustercam_pl.lit_module import ClusterCAMLitModule
from clustercam_pl.models import ClusterCAMNet, NetConfig
from clustercam_pl.models.config import PRESET_DIR

CONF_DIR = PRESET_DIR.parent  # the configs shipped inside the package

# The one small network of the tests: conf/net/tiny.yaml shrunk to a few thousand weights.
TEST_NET = dict(embed_dim=32, depth=2, num_heads=2, pos_grid=4, decoder_width=8, drop_path_rate=0.0)


def tiny_net(num_classes: int = 4, **fields) -> ClusterCAMNet:
    """`NetConfig.preset("tiny")` at test size; `fields` change any `NetConfig` field."""
    return ClusterCAMNet(NetConfig.preset("tiny", num_classes=num_classes, **(TEST_NET | fields)))

# The network of the tests' training runs, as Hydra overrides: conf/net/tiny.yaml shrunk (every test
# that trains through a config takes these from here).
TINY_NET_OVERRIDES = [
    "net.embed_dim=32",
    "net.depth=2",
    "net.num_heads=2",
    "cam.cam_layers=2",
    "net.decoder_width=16",
]

# A few-second synthetic run: tiny net, tiny images, few batches, no loggers.
TINY_OVERRIDES = [
    "+experiment=synthetic",
    "logger=none",
    *TINY_NET_OVERRIDES,
    "cam.p2p_refine=true",  # the reference's CAM path (the synthetic experiment turns it off)
    "data.synthetic.image_size=64",
    "data.synthetic.num_train=16",
    "data.synthetic.num_val=4",
    "data.synthetic.num_test=4",
    "data.global_batch_size=4",
    "data.val_batch_size=2",
    "cam.par_iters=2",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "model.seg_start_epoch=1",
]

# The one trained run the tests share (conftest.py's session fixture `tiny_run`): one epoch of 4 steps,
# a step checkpoint every 2 steps, and a reference batch other than the run's, so env.json carries a note.
TINY_RUN_OVERRIDES = [
    *TINY_OVERRIDES,
    "trainer.max_epochs=1",
    "callbacks.step_checkpoint.every_n_train_steps=2",
    "reference_batch_size=16",
]


@dataclass(frozen=True)
class TinyRun:
    """A finished `train(compose_train(TINY_RUN_OVERRIDES))`: its run folder, the metrics `train`
    returned, and the (level, message) of every clustercam_pl log record at INFO and above. Tests
    read it; whatever writes goes into the test's own tmp_path."""

    folder: Path
    summary: Mapping[str, Any]
    messages: tuple[tuple[int, str], ...]

    @property
    def last(self) -> Path:
        return self.folder / "checkpoints" / "last.ckpt"


@contextmanager
def hydra_config():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def compose_config(name: str, overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """Compose conf/<name>.yaml (a command's config) outside a Hydra run, with paths.output_dir pointed at
    output_dir."""
    with hydra_config():
        cfg = compose(name, overrides=overrides)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


def compose_train(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    return compose_config("train", overrides, output_dir)


def compose_eval(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    return compose_config("eval", overrides, output_dir)


def rel_err(a: Tensor, b: Tensor) -> float:
    """||a - b|| / ||b||, the parity fixture's definition of a match."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def save_framework_checkpoint(net: ClusterCAMNet, path: Path, *, class_names: Sequence[str] | None = None,
                              cam: Mapping[str, Any] | None = None, epoch: int = 1, global_step: int = 4) -> Path:
    """A framework checkpoint of `net` without a training run: the keys of a `ClusterCAMLitModule`
    checkpoint that eval, export_labels and predict read (`cam`: the run's CAM settings, as
    hyper_parameters["cam"] carries them)."""
    checkpoint: dict[str, Any] = {
        "clustercam": framework_section(net, class_names),
        "state_dict": {"net." + k: v for k, v in net.state_dict().items()},
        "epoch": epoch,
        "global_step": global_step,
    }
    if cam is not None:
        checkpoint["hyper_parameters"] = {"cam": dict(cam)}
    torch.save(checkpoint, path)
    return path


def one_training_step(cfg: DictConfig) -> tuple[ClusterCAMLitModule, Tensor]:
    """What `train(cfg)` does for its first step, without a Trainer: the config checks, the datamodule
    and module the config builds (pretrained weights loaded), one batch of the training loader,
    `training_step` with the segmentation branch on, backward. Returns the module and the loss.

    For configs that differ from a trained one only in settings: their whole path is built and
    differentiated in a second instead of a training run's ten."""
    from clustercam_pl.entry import check_config
    from clustercam_pl.train import build

    check_config(cfg)
    datamodule, module = build(cfg)
    datamodule.setup("fit")
    module.setup("fit")
    module.hparams.seg_start_epoch = 0  # current_epoch is 0 without a Trainer: CAMs, PAR and the decoder run
    batch = next(iter(datamodule.train_dataloader()))  # image (B, 3, H, W), cls_label (B, K)
    module.train()
    with warnings.catch_warnings():  # self.log without a Trainer only warns: not news here
        warnings.filterwarnings("ignore", message=r"You are trying to `self.log\(\)`")
        loss = module.training_step(batch, 0)
    loss.backward()
    return module, loss.detach()


@contextmanager
def log_to_stderr(level: int = logging.INFO):
    """clustercam_pl's log records at `level` and above written to sys.stderr as the command line shows
    them (message only), also from processes forked inside the block: what `capfd` reads of a
    multi-process command run in the test's process."""
    logger, handler = logging.getLogger("clustercam_pl"), logging.StreamHandler(sys.stderr)
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield
    finally:
        handler.flush()
        logger.removeHandler(handler)
        logger.setLevel(old)


def _with_one_thread(fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    torch.set_num_threads(1)  # the OpenMP thread pool of the parent does not survive a fork: not used here
    fn(*args)


def fork_process(fn: Callable[..., Any], *args: Any, daemon: bool = True) -> multiprocessing.process.BaseProcess:
    """Start `fn(*args)` in a process forked from this one: a real process that a test can SIGKILL
    mid-run, without a new interpreter's start-up (importing torch, Lightning and Hydra: seconds of CPU).
    A daemon unless `daemon=False` (a daemon may not start processes of its own), so a failing test never
    waits for it at exit."""
    proc = multiprocessing.get_context("fork").Process(target=_with_one_thread, args=(fn, args), daemon=daemon)
    proc.start()
    return proc


# The imports of the command-line entry points, done once per test process by the forkserver that
# `start_command` forks from (torch, Lightning, Hydra, timm, albumentations: ~7 s of CPU per interpreter).
_COMMAND_PRELOAD = ["clustercam_pl.train", "clustercam_pl.eval", "clustercam_pl.data.datamodule",
                    "clustercam_pl.data.transforms"]
_COMMANDS = multiprocessing.get_context("forkserver")


def _run_module(module: str, args: list[str], cwd: str, env: dict[str, str], out: str, err: str) -> None:
    """`python -m module *args` in a child of the forkserver: argv, cwd, environment and file descriptors
    set as a new interpreter would have them, then the module run as __main__ (runpy, as `-m` does)."""
    import runpy

    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    sys.path[:0] = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    torch.set_num_threads(int(env.get("OMP_NUM_THREADS", "1")))
    sys.argv = [module, *args]
    sys.modules.pop(module, None)  # `-m` runs the module's code as __main__, not the preloaded copy
    runpy.run_module(module, run_name="__main__", alter_sys=True)


@dataclass
class Command:
    """A command-line run started by `start_command`: a real process (its own pid, exit status and
    signals), its output in files."""

    proc: multiprocessing.process.BaseProcess
    args: list[str]
    out: Path
    err: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.exitcode

    def send_signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        self.proc.kill()

    def output(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def wait(self, timeout: float | None = None) -> subprocess.CompletedProcess:
        """The finished run as `subprocess.run` gives it (returncode -N for signal N); a run still going
        after `timeout` is killed and raises subprocess.TimeoutExpired."""
        self.proc.join(timeout)
        if self.proc.exitcode is None:
            self.proc.kill()
            self.proc.join()
            raise subprocess.TimeoutExpired(self.args, timeout, self.out.read_text(), self.err.read_text())
        done = subprocess.CompletedProcess(self.args, self.proc.exitcode, self.out.read_text(), self.err.read_text())
        shutil.rmtree(self.out.parent)
        return done


def _ensure_forkserver() -> None:
    """Start the forkserver (once per test process) with the entry points imported and one OpenMP thread:
    a fork of a process whose OpenMP pool has threads can hang in its first parallel operation."""
    from multiprocessing import forkserver

    multiprocessing.set_forkserver_preload(_COMMAND_PRELOAD)
    threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        forkserver.ensure_running()
    finally:
        if threads is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = threads


def start_command(module: str, args: Sequence[str], cwd: Path, env: Mapping[str, str]) -> Command:
    """`python -m module *args` as its own process, started without an interpreter's start-up: it is forked
    from a forkserver that imported the entry points once (Python's multiprocessing forkserver, a clean
    process: not this one, whose autograd threads a forked training could not use). What the command does
    from `main()` on is what a new interpreter does (Hydra's argv parsing, logging set-up, signal handlers,
    exit status); `python -m` itself is run by test_install.py and by the DDP launcher's other ranks."""
    _ensure_forkserver()
    logs = Path(tempfile.mkdtemp(prefix="command-"))
    out, err = logs / "stdout", logs / "stderr"
    proc = _COMMANDS.Process(target=_run_module, args=(module, list(args), str(cwd), dict(env), str(out), str(err)))
    proc.start()
    return Command(proc, ["python", "-m", module, *args], out, err)


def run_command(module: str, args: Sequence[str], cwd: Path, env: Mapping[str, str],
                timeout: float = 300) -> subprocess.CompletedProcess:
    """`subprocess.run([python, "-m", module, *args], capture_output=True, text=True)` through `start_command`."""
    return start_command(module, args, cwd, env).wait(timeout)
