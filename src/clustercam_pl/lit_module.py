"""The LightningModule: forward, multi-scale CAMs -> PAR pseudo labels, the three losses, metrics.

One training step reads like the method (reference: DCVL-WSSS/ClusterCAM engine.py `train_one_epoch`):

    cams   = multi_scale_cam(net, image)                       # no grad, train mode by default
    pseudo = refine_with_background(PAR, image, cams * label)  # fg / bg / ignore=255 (no background
                                                               # class: refine_without_background)
    out    = net(image)
    loss   = L_cls + L_patch + 0.1 * L_seg                     # L_seg from the warm-up epoch on

Validation predicts and scores through `clustercam_pl.inference.network`, the functions `eval` and the
pseudo-label export use, so in-training val and `eval=ss` give the same number for any val batch size.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from clustercam_pl import checkpoint as ckpt_io
from clustercam_pl.cam.config import CAMConfig
from clustercam_pl.cam.generate import pseudo_label_step
from clustercam_pl.cam.par import PAR
from clustercam_pl.data.labels import IGNORE_INDEX
from clustercam_pl.inference.network import cam_prediction, predict, pseudo_labels_per_image, scored_pseudo_label
from clustercam_pl.losses import ClusterCAMLoss, LossConfig, seg_loss
from clustercam_pl.metrics import PerImageAveragePrecision, SegmentationIoU
from clustercam_pl.models import ClusterCAMNet
from clustercam_pl.models.smp_net import SmpSegNet
from clustercam_pl.optim import OptimConfig, adamw, lr_at

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training produced NaN/Inf; raised after the last good weights were saved."""


class ClusterCAMLitModule(L.LightningModule):
    """Trains ClusterCAMNet end to end from image-level labels.

    Args:
        net: the network (built from `conf/net`).
        cam: CAM -> pseudo-label settings.
        loss: the weights of the three loss terms.
        optim: optimiser and schedule.
        seg_start_epoch: the segmentation loss (and the pseudo-label work) starts at this epoch
            (reference 50 of 80 on VOC, 40 of 60 on COCO).
        pretrained: ImageNet ViT weights for the backbone (timm name or local file); None = random.
        val_pseudo_labels: also score CAMs and refined pseudo labels on the validation masks.
        check_finite: stop at the first non-finite loss (costs one host sync per step).
        compile: `torch.compile` the backbone, CAM head and decoder before training (worth it on a
            GPU; on CPU inductor takes minutes per input size). Checkpoint keys are unchanged.
    """

    def __init__(
        self,
        net: ClusterCAMNet,
        cam: CAMConfig,
        loss: LossConfig,
        optim: OptimConfig,
        seg_start_epoch: int = 50,
        pretrained: str | None = None,
        val_pseudo_labels: bool = True,
        check_finite: bool = True,
        compile: bool = False,
    ):
        super().__init__()
        # Plain types only, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters({
            "net": net.cfg.to_dict(),
            "cam": asdict(cam),
            "loss": asdict(loss),
            "optim": asdict(optim),
            "seg_start_epoch": int(seg_start_epoch),
            "pretrained": None if pretrained is None else str(pretrained),
            "val_pseudo_labels": bool(val_pseudo_labels),
            "check_finite": bool(check_finite),
            "compile": bool(compile),
        })
        if isinstance(net, ClusterCAMNet):  # an smp network (stage two) makes no CAMs
            cam.check_for(net.cfg)
        self.net, self.cam_cfg, self.optim_cfg = net, cam, optim
        self.criterion = ClusterCAMLoss(loss)
        self.par = PAR(dilations=cam.par_dilations, num_iter=cam.par_iters)
        C = net.cfg.num_labels  # K + 1 label values with a background class, K without
        # Scored against the masks: their void value is IGNORE_INDEX, whatever the CAM settings.
        self.val_seg = SegmentationIoU(C, ignore_index=IGNORE_INDEX)
        self.val_pseudo = SegmentationIoU(C, ignore_index=IGNORE_INDEX)
        self.val_cam = SegmentationIoU(C, ignore_index=IGNORE_INDEX)
        self.val_map = PerImageAveragePrecision()
        self.best_seg_miou: float = float("nan")
        # The decoder's per-class IoU (C,) of the last validation with masks; None before one.
        self.last_per_class_iou: Tensor | None = None

    # ----------------------------------------------------------------------------------- setup
    def configure_model(self) -> None:
        # Lightning calls this once per stage, before the strategy wraps the module (DDP).
        if self.hparams.compile and not self.net.compiled:
            self.net.compile_parts()

    def setup(self, stage: str) -> None:
        # Runs before a checkpoint is restored, so a resumed run overwrites these weights.
        if stage == "fit" and self.hparams.pretrained:
            ckpt_io.load_imagenet_weights(self.net, self.hparams.pretrained)
            log.info("backbone initialised from %s", self.hparams.pretrained)

    # ------------------------------------------------------------------------------ CAM step
    def segmentation_targets(self, image: Tensor, cls_label: Tensor) -> tuple[Tensor, Tensor]:
        """Multi-scale CAMs (B, K, H, W) masked by the labels, and the pseudo labels (B, H, W) the decoder learns."""
        return pseudo_label_step(self.net, self.par, self.cam_cfg, image, cls_label)

    def seg_active(self) -> bool:
        return self.current_epoch >= self.hparams.seg_start_epoch

    # ------------------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        image, cls_label = batch["image"], batch["cls_label"]  # (B, 3, H, W), (B, K)
        use_seg = self.seg_active()
        pseudo = self.segmentation_targets(image, cls_label)[1] if use_seg else None  # (B, H, W)
        out = self.net(image, with_seg=use_seg)
        losses = self.criterion(out.cls_logits, out.patch_logits, out.seg_logits, cls_label, pseudo,
                                background=self.net.cfg.background)
        if self.hparams.check_finite and not torch.isfinite(losses["total"]):
            self._stop_on_non_finite(losses)
        B = image.shape[0]
        detached = {k: v.detach() for k, v in losses.items()}
        self.log_dict({f"train/loss_{k}": v for k, v in detached.items()}, batch_size=B, prog_bar=False)
        self.log("train/loss", detached["total"], batch_size=B, prog_bar=True)
        self.log("train/alpha_mean", self._alpha_mean(), batch_size=B)
        return losses["total"]

    def _alpha_mean(self) -> Tensor:
        alphas = self.net.alphas()  # (L_c,)
        return alphas.mean().detach() if alphas.numel() else torch.zeros((), device=self.device)

    def _stop_on_non_finite(self, losses: dict[str, Tensor]) -> None:
        terms = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
        where = f"epoch {self.current_epoch}, global step {self.global_step}"
        saved = ""
        if self.trainer is not None and self.trainer.log_dir is not None:
            # The weights are still the last good ones: the loss is checked before the update.
            path = Path(self.trainer.log_dir) / "checkpoints" / f"nonfinite-step{self.global_step}.ckpt"
            self.trainer.save_checkpoint(path)
            saved = f"; the last good weights are in {path}"
        raise NonFiniteLossError(f"non-finite loss at {where}: {terms}{saved}")

    # ---------------------------------------------------------------------------- validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        image, cls_label, size = batch["image"], batch["cls_label"], batch.get("image_size")
        pred = predict(self.net, image, image_size=size)  # the `eval=ss` prediction, per image size
        self.val_map.update(pred.cls_logits, cls_label)
        mask = batch.get("mask")
        if mask is None:
            return
        self.val_seg.update(pred.probs.argmax(1), mask)  # padding: 0 predicted, 255 in the mask
        if self.hparams.val_pseudo_labels:
            cams, pseudo = pseudo_labels_per_image(self.net, self.par, image, cls_label, self.cam_cfg, size)
            self.val_pseudo.update(scored_pseudo_label(pseudo, IGNORE_INDEX), mask)
            background = self.cam_cfg.cam_background if self.net.cfg.background else None
            self.val_cam.update(cam_prediction(cams, background, cls_label), mask)

    def on_validation_epoch_end(self) -> None:
        metrics = {"val/map": self.val_map.compute()}
        self.val_map.reset()
        for name, metric in (("seg", self.val_seg), ("pseudo", self.val_pseudo), ("cam", self.val_cam)):
            if metric.update_called:
                result = metric.compute()
                metrics[f"val/{name}_miou"] = result["miou"]
                if name == "seg":
                    self.last_per_class_iou = result["per_class"].cpu()
            metric.reset()
        self.log_dict(metrics, prog_bar=True, sync_dist=False)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self.on_validation_epoch_end()

    # ----------------------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.optim_cfg
        dm = getattr(self.trainer, "datamodule", None)
        global_batch = getattr(dm, "global_batch_size", None) or 1
        base_lr = cfg.base_lr(global_batch)
        opt = adamw(self.net, cfg, global_batch)
        total_epochs = max(int(self.trainer.max_epochs or 1), 1)
        if cfg.interval == "epoch":
            fn = lambda e: lr_at(e, base_lr, total_epochs, cfg) / base_lr  # noqa: E731
        else:
            steps = self._optimizer_steps_per_epoch()
            fn = lambda s: lr_at(s / steps, base_lr, total_epochs, cfg) / base_lr  # noqa: E731
        sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": cfg.interval}}

    def _optimizer_steps_per_epoch(self) -> int:
        """Optimiser steps in one epoch, so a per-step schedule keeps the per-epoch curve's shape.

        From the training batches per epoch, not from `estimated_stepping_batches / max_epochs`,
        which is capped by `max_steps` and would stretch the schedule of a run cut short.
        """
        trainer = self.trainer
        estimated = trainer.estimated_stepping_batches  # also sets up the train dataloader
        batches = trainer.num_training_batches
        if not math.isfinite(batches):  # iterable dataset without a length
            return max(int(estimated / max(int(trainer.max_epochs or 1), 1)), 1)
        return max(math.ceil(batches / trainer.accumulate_grad_batches), 1)

    # ---------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        names = getattr(getattr(self.trainer, "datamodule", None), "class_names", None) if self._trainer else None
        checkpoint["clustercam"] = ckpt_io.framework_section(self.net, names)
        # The network config is stored once, in clustercam.net_config; hparams keep it for the loggers.
        if "hyper_parameters" in checkpoint:
            checkpoint["hyper_parameters"] = {k: v for k, v in checkpoint["hyper_parameters"].items() if k != "net"}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Resuming a file of an earlier format: the state dict keys are unchanged, the rest migrates.
        source = str(self._trainer.ckpt_path) if self._trainer is not None else "checkpoint"
        checkpoint.update(ckpt_io.migrate(checkpoint, source))


class StageTwoLitModule(ClusterCAMLitModule):
    """Stage two: the ClusterCAM network trained with the segmentation loss on fixed labels.

    The batches carry ``mask`` = the exported (refined) label of each crop (``data.label_dir``); there are
    no CAMs and no classification terms. The loss is the framework's balanced :func:`~clustercam_pl.losses.seg_loss`
    (background and foreground averaged apart, as stage one's decoder learns; the plain cross-entropy
    without a background class). Validation, checkpoints
    (format 3, ``hyper_parameters.stage = 2``) and the optimiser are stage one's.

    Args:
        init_from: a stage-one checkpoint whose weights start the run (its network config must equal
            ``net``'s); None: ``pretrained`` ImageNet weights or random.
        smp: the smp network's settings (``SmpConfig`` without ``num_classes``); the entry point builds
            ``net`` from them (an :class:`~clustercam_pl.models.smp_net.SmpSegNet`), here they are recorded.
            An ``encoder_weights`` file is loaded into its encoder at the start of training, as ``pretrained``.
        Other arguments: as :class:`ClusterCAMLitModule`; ``seg_start_epoch`` must be 0 and
        ``val_pseudo_labels`` False (accepted so that the shared ``model`` config keys pass through).
    """

    def __init__(self, net: ClusterCAMNet | SmpSegNet, cam: CAMConfig, loss: LossConfig, optim: OptimConfig,
                 init_from: str | None = None, pretrained: str | None = None, check_finite: bool = True,
                 compile: bool = False, seg_start_epoch: int = 0, val_pseudo_labels: bool = False,
                 smp: Mapping[str, Any] | None = None):
        if seg_start_epoch != 0 or val_pseudo_labels:
            raise ValueError(f"stage two trains the decoder from the first step on fixed labels: set "
                             f"model.seg_start_epoch=0 and model.val_pseudo_labels=false (got {seg_start_epoch}, "
                             f"{val_pseudo_labels})")
        super().__init__(net, cam, loss, optim, seg_start_epoch=0, pretrained=pretrained,
                         val_pseudo_labels=False, check_finite=check_finite, compile=compile)
        self.save_hyperparameters({"stage": 2, "init_from": None if init_from is None else str(init_from),
                                   "network": "smp" if isinstance(net, SmpSegNet) else "clustercam"})
        if isinstance(net, SmpSegNet):
            if init_from or pretrained:
                raise ValueError("model.init_from / model.pretrained are ClusterCAM weights; an smp network takes "
                                 "its encoder weights from model.smp.encoder_weights (imagenet from the hub, or a "
                                 "local file: model.smp.encoder_weights=/path/to/encoder.pth): set both to null")
        else:
            # The CAM head makes no segmentation: frozen, so that no parameter goes without a gradient (DDP).
            self.net.head.requires_grad_(False)

    def setup(self, stage: str) -> None:
        # Before a resumed checkpoint is restored: a resumed run overwrites these weights.
        if stage == "fit" and self.hparams.init_from:
            self.net.load_state_dict(stage_one_weights(self.hparams.init_from, self.net))
            log.info("stage two initialised from %s", self.hparams.init_from)
        elif stage == "fit" and isinstance(self.net, SmpSegNet) and self.net.cfg.encoder_file:
            ckpt_io.load_smp_encoder_weights(self.net, self.net.cfg.encoder_file)
            log.info("smp encoder initialised from %s", self.net.cfg.encoder_file)
        else:
            super().setup(stage)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        image, label = batch["image"], batch["mask"]  # (B, 3, S, S), (B, S, S) 255 = ignore
        out = self.net(image, with_seg=True)
        up = F.interpolate(out.seg_logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
        loss = seg_loss(up, label, background=self.net.cfg.background)  # up: (B, C, S, S)
        if self.hparams.check_finite and not torch.isfinite(loss):
            self._stop_on_non_finite({"seg": loss})
        self.log("train/loss", loss.detach(), batch_size=image.shape[0], prog_bar=True)
        return loss


def stage_one_weights(path: str | Path, net: ClusterCAMNet) -> dict[str, Tensor]:
    """The state dict of the network in ``path``, refused (naming both) when its config differs from ``net``'s."""
    loaded = ckpt_io.load_checkpoint(path)
    if loaded.net.cfg != net.cfg:
        theirs, ours = loaded.net.cfg.to_dict(), net.cfg.to_dict()
        diff = {k: (theirs.get(k), ours.get(k)) for k in sorted(set(theirs) | set(ours))
                if theirs.get(k) != ours.get(k)}
        raise ValueError(f"model.init_from={path}: its network differs from net (checkpoint, config): {diff}; "
                         "pass the same net preset and overrides as the stage-one run")
    return loaded.net.state_dict()


def module_from_checkpoint(path: str | Path) -> ClusterCAMLitModule:
    """A `ClusterCAMLitModule` in eval mode from a framework checkpoint, for analysis and figures.

    The network comes from `checkpoint.load_checkpoint` (its stored network config, any format), the
    CAM/loss/optimiser settings from the file's hyper-parameters; the file is read with `weights_only=True`.
    """
    loaded = ckpt_io.load_checkpoint(path)
    if loaded.kind != "framework":
        raise ValueError(f"{path} is a reference checkpoint: it has no training settings to build a "
                         "ClusterCAMLitModule from; use its network: "
                         f"clustercam_pl.checkpoint.load_checkpoint('{path}').net")
    hp = loaded.hparams
    module = ClusterCAMLitModule(
        loaded.net,
        CAMConfig.from_stored(loaded.cam, str(path)),
        LossConfig(**hp.get("loss", {})),
        OptimConfig.from_stored(hp.get("optim", {})),
        seg_start_epoch=hp.get("seg_start_epoch", 0),
    )
    return module.eval()
