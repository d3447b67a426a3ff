"""Training callbacks: preemption (SIGTERM) handling, CAM image logging, per-epoch reseeding.

Atomic checkpoint writing is `clustercam_pl.checkpoint.AtomicCheckpointIO`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class PreemptionCheckpoint(L.Callback):
    """`last.ckpt` at the end of training and, on SIGTERM (SLURM preemption, `kill`), where the run stops.

    Lightning's handler only sets `trainer.received_sigterm`; its loops then raise `SIGTERMException`
    (a `SystemExit`, exit status 0) at the next batch end of training or validation, or at the epoch
    end. Whatever the run was doing when the signal came (a batch, validation, a checkpoint save), that
    exception passes through `on_exception`, which saves here first and says so, so the next start of
    the same run folder resumes from the last finished step. The step checkpoints write `last.ckpt`
    every N steps only; the save at the end makes it hold the final weights too.
    """

    def __init__(self, dirpath: str | None = None, filename: str = "last.ckpt"):
        self.dirpath, self.filename = dirpath, filename
        self.saved_at: int | None = None

    def _path(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath or Path(trainer.default_root_dir) / "checkpoints") / self.filename

    def _save(self, trainer: L.Trainer) -> Path:
        path = self._path(trainer)
        trainer.save_checkpoint(path)  # every rank calls it; the strategy writes on rank 0
        self.saved_at = trainer.global_step
        return path

    def _save_for_sigterm(self, trainer: L.Trainer) -> None:
        # (saved already: the signal came after the save at the end of training)
        path = self._path(trainer) if self.saved_at == trainer.global_step else self._save(trainer)
        log.warning("SIGTERM: saved %s at step %d; rerun the same command to resume", path, trainer.global_step)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            self._save_for_sigterm(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.saved_at != trainer.global_step:
            path = self._save(trainer)
            if trainer.received_sigterm:  # the signal came after the last batch: training ended anyway
                log.warning("SIGTERM: saved %s at step %d; rerun the same command to resume", path,
                            trainer.global_step)


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
        image = render_panels(panels, background=pl_module.net.cfg.background)  # (H, W, 3) uint8
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
