"""Export pseudo labels and CAMs: `python -m clustercam_pl.export_labels ckpt_path=... [split=train_aug]`.

Writes `clustercam_pl.tasks.export_labels`'s layout (labels/<id>.png, cams/<id>.npz, meta.json and the
mIoU where the split has masks), resumable. CAM settings come from `conf/cam`; `cam.cam_layers` and
`cam.p2p_refine` are null here and then taken from the checkpoint (what the run trained with; the
reference's 3 / true for reference checkpoints). `trainer=ddp trainer.devices=N` (as training)
exports on N processes, each image by one of them. `export_pseudo_labels(cfg)` is importable; `main`
is the Hydra wrapper.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from clustercam_pl.cam.config import CAMConfig
from clustercam_pl.checkpoint import LoadedCheckpoint, find_one_checkpoint, load_checkpoint
from clustercam_pl.entry import (
    launch_command,
    loader_workers,
    net_overrides,
    record_env,
    run_dir,
    write_metrics,
)
from clustercam_pl.tasks.export_labels import export_split
from clustercam_pl.utils.distributed import Ranks

log = logging.getLogger("clustercam_pl.export_labels")

FROM_CHECKPOINT = ("cam_layers", "p2p_refine")


def cam_settings(cfg: DictConfig, ckpt: LoadedCheckpoint) -> CAMConfig:
    """`cfg.cam`, with the settings left null (`FROM_CHECKPOINT`) taken from the checkpoint's own."""
    values = OmegaConf.to_container(cfg.cam, resolve=True)
    values.pop("_target_", None)
    return CAMConfig.from_stored(
        {k: v for k, v in ckpt.cam.items() if k in FROM_CHECKPOINT}, ckpt.path,
        **{k: v for k, v in values.items() if not (k in FROM_CHECKPOINT and v is None)},
    )


def export_pseudo_labels(cfg: DictConfig) -> dict[str, Any]:
    """Write (or complete) the pseudo labels and CAMs of a split on the processes of `cfg.trainer`
    (one by default); return and write the metrics (the main process)."""
    return launch_command(cfg, _export)


def _export(ranks: Ranks, cfg: DictConfig) -> dict[str, Any]:
    device = ranks.device
    dm = instantiate(cfg.data, _convert_="all", num_workers=loader_workers(cfg, ranks.local_world_size))
    split = str(cfg.split) if cfg.split else dm.train_split
    path = find_one_checkpoint(cfg.ckpt_path)
    ckpt = load_checkpoint(path, **net_overrides(cfg))
    cam = cam_settings(cfg, ckpt)
    default_out = Path(str(cfg.paths.root_dir)) / "outputs" / "pseudo_labels" / f"{dm.dataset}_{split}"
    out_dir = Path(str(cfg.out_dir)) if cfg.out_dir else default_out
    if ranks.is_main:
        try:
            record_env(cfg, run_dir(cfg), accelerator=device.type, world_size=ranks.world_size)
        except Exception as e:  # outside a Hydra run paths.output_dir may not resolve
            log.debug("no run folder for env.json: %s", e)
    summary = export_split(ckpt, dm, split, cam, out_dir, device, int(cfg.cam_downscale), cfg.limit,
                           bool(cfg.overwrite), ranks=ranks)
    if ranks.is_main:
        print(summary["text"], flush=True)
        try:
            write_metrics(run_dir(cfg) / "pseudo_label_metrics.json", summary)
        except Exception as e:  # outside a Hydra run paths.output_dir may not resolve
            log.debug("no run folder for the metrics: %s", e)
    return summary


@hydra.main(config_path="conf", config_name="export_labels", version_base="1.3")
def main(cfg: DictConfig) -> float:
    summary = export_pseudo_labels(cfg)
    return float(summary.get("pseudo_miou", float("nan")))


if __name__ == "__main__":
    main()
