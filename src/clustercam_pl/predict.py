"""Apply a trained model to your own images: `python -m clustercam_pl.predict ckpt_path=... input=... out_dir=...`.

Masks, overlays, optional CAM heat maps and predictions.jsonl for a folder, glob, image or .txt list of
images (`clustercam_pl.tasks.predict` does the work and documents the outputs). The protocol is the
`eval` config group of `clustercam_pl.eval`. Exit status 0 when every input was predicted,
`EXIT_SOME_FAILED` when some could not be read (they are listed in <out_dir>/failed.txt), 1 on errors.
`trainer=ddp trainer.devices=N` (as training) predicts on N processes, each input by one of them; every
process exits with the same status. `run_predict(cfg)` is importable (tests call it); `main` is the
Hydra wrapper.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from clustercam_pl.entry import (
    as_list,
    launch_command,
    net_overrides,
    protocol_from_config,
    record_env,
)
from clustercam_pl.tasks.predict import FAILED, predict_images
from clustercam_pl.utils.distributed import Ranks

log = logging.getLogger("clustercam_pl.predict")

EXIT_SOME_FAILED = 3
"""Exit status when some inputs could not be read (the others were predicted)."""


def run_predict(cfg: DictConfig) -> dict[str, Any]:
    """Predict every input of `cfg.input` into `cfg.out_dir` on the processes of `cfg.trainer` (one by
    default); record env.json there; return the summary (the same on every process)."""
    return launch_command(cfg, _predict)


def _predict(ranks: Ranks, cfg: DictConfig) -> dict[str, Any]:
    out_dir = Path(str(cfg.out_dir))
    names = cfg.class_names
    summary = predict_images(
        as_list(cfg.ckpt_path), as_list(cfg.input), out_dir, protocol_from_config(cfg.eval), ranks.device,
        cams=bool(cfg.cams), threshold=cfg.threshold, max_side=cfg.max_side,
        class_names=None if names is None else [str(n) for n in OmegaConf.to_container(names)],
        overwrite=bool(cfg.overwrite), progress=bool(cfg.progress),
        net_overrides=net_overrides(cfg), crf_workers=cfg.crf_workers, ranks=ranks,
        on_claim=lambda: record_env(cfg, out_dir, accelerator=ranks.device.type, world_size=ranks.world_size),
        max_pixels=cfg.max_pixels, window=cfg.get("window"), overlap=cfg.get("overlap", 0.25),
    )
    if summary["failed"] and ranks.is_main:
        log.error("%d of %d inputs could not be read (listed in %s); exit status %d",
                  len(summary["failed"]), summary["inputs"], out_dir / FAILED, EXIT_SOME_FAILED)
    return summary


@hydra.main(config_path="conf", config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if run_predict(cfg)["failed"]:  # every process: the summary is the same on all
        sys.exit(EXIT_SOME_FAILED)


if __name__ == "__main__":
    main()
