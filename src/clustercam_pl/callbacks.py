"""Training infrastructure: atomic checkpoints, preemption (SIGTERM) handling, CAM image logging."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from clustercam_pl.run_folder import temporary_path

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file, flushed, then renamed over the target.

    A kill during a save leaves the previous checkpoint intact (rename is atomic on POSIX); the
    half-written temporary is removed or ignored. Loading uses `weights_only=True`.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_path(path)  # a later start removes it if this process dies mid-save
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    def load_checkpoint(self, path: _PATH, map_location: Any = None, weights_only: bool | None = None) -> dict:
        from clustercam_pl.models.weights import load_checkpoint_file

        return load_checkpoint_file(path)


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM (SLURM preemption, `kill`), save `last.ckpt` after the current step, then stop.

    Lightning notices the signal and exits after the batch; this saves first, so the next start of
    the same run folder resumes from the step that was running.
    """

    def __init__(self, dirpath: str | None = None, filename: str = "last.ckpt"):
        self.dirpath, self.filename = dirpath, filename
        self.saved_at: int | None = None

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.received_sigterm and self.saved_at is None:
            dirpath = Path(self.dirpath or Path(trainer.default_root_dir) / "checkpoints")
            trainer.save_checkpoint(dirpath / self.filename)
            self.saved_at = trainer.global_step
            log.warning("SIGTERM: saved %s at step %d; rerun the same command to resume",
                        dirpath / self.filename, trainer.global_step)


class CAMImageLogger(L.Callback):
    """Every `every_n_steps` training steps, log a panel of maps for the first images of the batch.

    Panels: input, patch-to-class attention, cluster-to-class attention mapped back, ClusterCAM,
    pseudo label. Goes to wandb / TensorBoard when those loggers are active, else to PNG files in
    the run folder.
    """

    def __init__(self, every_n_steps: int = 500, num_images: int = 2):
        self.every_n_steps, self.num_images = int(every_n_steps), int(num_images)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: dict[str, Any], batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps <= 0 or step == 0 or step % self.every_n_steps or not trainer.is_global_zero:
            return
        from clustercam_pl.visualize import cam_panels, render_panels

        n = min(self.num_images, batch["image"].shape[0])
        panels = cam_panels(pl_module, batch["image"][:n], batch["cls_label"][:n])
        image = render_panels(panels)  # (H, W, 3) uint8
        self._log(trainer, image, step)

    @staticmethod
    def _log(trainer: L.Trainer, image, step: int) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

        logged = False
        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger):
                lg.log_image("train/cams", images=[image], step=step)
                logged = True
            elif isinstance(lg, TensorBoardLogger):
                lg.experiment.add_image("train/cams", image, step, dataformats="HWC")
                logged = True
        if not logged:
            from PIL import Image

            out = Path(trainer.default_root_dir) / "cam_images"
            out.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(out / f"step{step:07d}.png")


class EpochSeed(L.Callback):
    """Reseed every RNG at each epoch start from (seed, epoch).

    A run resumed from a checkpoint saved at an epoch boundary then draws the same drop-path masks
    and augmentations as the uninterrupted run (with `num_workers=0`; worker processes are seeded
    from these generators too, but their scheduling order is the loader's).
    """

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from lightning.fabric.utilities.seed import seed_everything

        seed_everything(self.seed * 100_003 + trainer.current_epoch + 1, workers=True, verbose=False)
