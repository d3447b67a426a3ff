"""Train ClusterCAM: `python -m clustercam_pl.train +experiment=voc_vits [key=value ...]`.

`train(cfg)` is importable (tests call it); `main` is the thin Hydra wrapper.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf

from clustercam_pl.checkpoint import AtomicCheckpointIO
from clustercam_pl.data.labels import label_names
from clustercam_pl.entry import (
    WANDB_ID_FILE,
    attach_wandb_id,
    check_config,
    instantiate_dict,
    record_env,
    resolve_ckpt,
    run_dir,
    write_metrics,
)
from clustercam_pl.lit_module import ClusterCAMLitModule
from clustercam_pl.models import ClusterCAMNet
from clustercam_pl.models.smp_net import SmpConfig, SmpSegNet
from clustercam_pl.utils.files import write_text
from clustercam_pl.utils.results import iou_table, scalar_metrics
from clustercam_pl.utils.run_folder import claim_run_folder

log = logging.getLogger("clustercam_pl.train")

HYDRA_SUBDIR = ".hydra"  # where Hydra's other commands keep the composed config (`hydra.output_subdir`)
REPORTED = ("val/seg_miou", "val/pseudo_miou", "val/cam_miou", "val/map")


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, ClusterCAMLitModule]:
    """Datamodule and LightningModule from a composed config (the network's K, input channels and
    normalisation come from the data)."""
    datamodule = instantiate(cfg.data, _convert_="all")  # plain types: checkpoints stay weights_only-loadable
    # The data's facts, never set by hand: K and whether label value 0 is a background class (below: the
    # input channels and their normalisation).
    data_facts = {"num_classes": datamodule.num_classes, "background": datamodule.has_background}
    smp = cfg.model.get("smp")  # stage two with a standard segmentation network (conf/experiment/*_stage2_smp)
    channels, stats = datamodule.in_channels, datamodule.normalization
    if smp:
        if channels != 3 or stats is not None:
            raise ValueError(f"model.smp (stage two with an smp network) takes RGB images with ImageNet's "
                             f"normalisation; data.dataset={datamodule.dataset} has {channels} channels and its own "
                             "mean / std: train stage two with the ClusterCAM decoder (drop model.smp)")
        net = SmpSegNet(SmpConfig(**data_facts, **OmegaConf.to_container(smp, resolve=True)))
    else:
        # The input channels and their normalisation come from the data too (the network keeps them).
        mean, std = stats or (None, None)
        net = ClusterCAMNet(instantiate(cfg.net, **data_facts, in_chans=channels, mean=mean, std=std,
                                        _convert_="all"))
    # Objects are passed to the partial, not as instantiate kwargs (Hydra would turn them into configs).
    model = instantiate(cfg.model, _partial_=True)(
        net=net,
        cam=instantiate(cfg.cam, _convert_="all"),
        loss=instantiate(cfg.loss),
        optim=instantiate(cfg.optim, _convert_="all"),
    )
    return datamodule, model


def hydra_files(cfg: DictConfig) -> dict[str, str]:
    """What Hydra writes into `<run folder>/.hydra/` ({} outside a Hydra run), as Hydra writes it.

    conf/train.yaml sets `hydra.output_subdir: null`, so Hydra writes nothing before the run folder's
    lock is taken (a refused second training would rewrite the first's files); `_fit` writes these
    once the folder is this run's. Taken before anything edits `cfg` (the wandb id).
    """
    if not HydraConfig.initialized():
        return {}
    hydra_cfg = HydraConfig.instance().cfg  # {"hydra": ...}
    return {"config.yaml": OmegaConf.to_yaml(cfg), "hydra.yaml": OmegaConf.to_yaml(hydra_cfg),
            "overrides.yaml": OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task)}


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit (resuming where the run folder says), optionally test, write metrics.json; return the metrics."""
    check_config(cfg)
    hydra_texts = hydra_files(cfg)
    L.seed_everything(cfg.seed, workers=True)
    out_dir = run_dir(cfg)
    wandb_id = attach_wandb_id(cfg)
    datamodule, model = build(cfg)
    loggers = instantiate_dict(cfg.get("logger"))
    callbacks = instantiate_dict(cfg.get("callbacks"))
    if not loggers:  # nothing to monitor the learning rate into
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
    try:
        if not trainer.is_global_zero:  # the run folder's lock is rank 0's
            return _fit(cfg, trainer, datamodule, model)
        ckpt_dirs = {Path(c.dirpath) for c in callbacks if getattr(c, "dirpath", None)} | {out_dir / "checkpoints"}
        with claim_run_folder(out_dir, sorted(ckpt_dirs)):
            return _fit(cfg, trainer, datamodule, model, hydra_texts, wandb_id)
    finally:
        if wandb_id is not None:  # the next job of a sequential sweep must start its own wandb run
            import wandb

            wandb.finish()


def _fit(cfg: DictConfig, trainer: L.Trainer, datamodule: L.LightningDataModule, model: ClusterCAMLitModule,
         hydra_texts: dict[str, str] | None = None, wandb_id: str | None = None) -> dict[str, Any]:
    out_dir = run_dir(cfg)
    if trainer.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, text in (hydra_texts or {}).items():
            (out_dir / HYDRA_SUBDIR).mkdir(exist_ok=True)
            write_text(out_dir / HYDRA_SUBDIR / name, text)
        (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        if wandb_id is not None:  # before fit: the processes DDP launches read it (attach_wandb_id)
            write_text(out_dir / WANDB_ID_FILE, wandb_id + "\n")
        record_env(cfg, out_dir, accelerator=type(trainer.accelerator).__name__, world_size=trainer.world_size,
                   global_batch=getattr(datamodule, "global_batch_size", None), precision=str(trainer.precision))
    trainer.fit(model, datamodule=datamodule, ckpt_path=resolve_ckpt(cfg))

    metrics = scalar_metrics(trainer.callback_metrics)
    if cfg.get("test"):
        trainer.test(model, datamodule=datamodule)
        metrics |= {k.replace("val/", "test/"): v for k, v in scalar_metrics(trainer.callback_metrics).items()}
    per_class = model.last_per_class_iou
    summary = {
        "metrics": metrics,
        **{k: metrics.get(k, float("nan")) for k in REPORTED},
        "global_step": trainer.global_step,
        "epoch": trainer.current_epoch,
        "best_checkpoint": _best_path(trainer),
        "run_dir": str(out_dir),
    }
    if per_class is not None:
        names = label_names(datamodule.class_names, model.net.cfg.background)
        summary["per_class_iou"] = dict(zip(names, per_class.tolist(), strict=False))
        if trainer.is_global_zero:
            log.info("per-class IoU of the segmentation decoder on val:\n%s", iou_table(per_class.tolist(), names))
    if trainer.is_global_zero:
        path = write_metrics(out_dir / "metrics.json", summary)
        log.info("metrics: %s", {k: round(summary[k], 4) for k in REPORTED})
        log.info("run folder: %s (metrics: %s)", out_dir, path)
    return summary


def _best_path(trainer: L.Trainer) -> str | None:
    cb = trainer.checkpoint_callback
    return str(cb.best_model_path) if cb is not None and cb.best_model_path else None


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    summary = train(cfg)
    return float(summary.get(cfg.get("optimized_metric", "val/seg_miou"), float("nan")))


if __name__ == "__main__":
    main()
