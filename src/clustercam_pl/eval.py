"""Evaluate checkpoints: `python -m clustercam_pl.eval ckpt_path=... eval=<protocol> [split=val]`.

`ckpt_path` takes a file, a list, a glob or a run folder. Each protocol (`conf/eval/`) is printed
with its result: mIoU (VOC convention) and the per-class IoU table; with several checkpoints the last
and the best are reported (`quote=last|best`). `export=true` writes and packs the predictions for the
VOC evaluation server. `trainer=ddp trainer.devices=N` (or `trainer.num_nodes`, `trainer=ddp_spawn`,
SLURM tasks) runs it on N processes, as training; `crf_workers` sets the post-processing worker
processes. `check_archive=<tar.gz>` checks a VOC server archive against the split list (no network).
The work is `clustercam_pl.tasks.evaluate`; `evaluate(cfg)` is importable (tests call it);
`main` is the Hydra wrapper.
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from clustercam_pl.entry import (
    as_list,
    launch_command,
    loader_workers,
    net_overrides,
    protocol_from_config,
    record_env,
    run_dir,
)
from clustercam_pl.tasks.evaluate import evaluate_checkpoints, report
from clustercam_pl.tasks.voc_archive import check_archive_of_split
from clustercam_pl.utils.distributed import Ranks

log = logging.getLogger("clustercam_pl.eval")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate every checkpoint of `cfg.ckpt_path` with protocol `cfg.eval` on the processes of
    `cfg.trainer` (one by default); write eval_metrics.json (the main process)."""
    if cfg.get("check_archive"):  # no network: check a VOC server archive against the split list
        dm = instantiate(cfg.data, _convert_="all", num_workers=0)
        result = check_archive_of_split(str(cfg.check_archive), dm, str(cfg.split))
        print(f"{result['archive']}: {result['images']} images, layout, sizes, palette and values as the VOC "
              "server expects: ready to upload", flush=True)
        return {"archive_check": result, "miou": None}
    return launch_command(cfg, _evaluate)


def _evaluate(ranks: Ranks, cfg: DictConfig) -> dict[str, Any]:
    protocol = protocol_from_config(cfg.eval)
    out_dir = run_dir(cfg)
    if ranks.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        record_env(cfg, out_dir, accelerator=ranks.device.type, world_size=ranks.world_size)
    dm = instantiate(cfg.data, _convert_="all", num_workers=loader_workers(cfg, ranks.local_world_size))
    summary = evaluate_checkpoints(
        as_list(cfg.ckpt_path), dm, str(cfg.split), protocol, ranks.device, out_dir,
        quote=str(cfg.quote), limit=cfg.limit, export_comp=str(cfg.export_comp) if cfg.export else None,
        net_overrides=net_overrides(cfg), crf_workers=cfg.crf_workers, ranks=ranks,
        overwrite=bool(cfg.get("overwrite", False)), progress=bool(cfg.get("progress", True)),
        save_scores=bool(cfg.get("save_scores", False)), score_downscale=int(cfg.get("score_downscale", 4)),
        scores_from=cfg.get("scores_from"),
    )
    if ranks.is_main:
        print(report(summary), flush=True)
        log.info("run folder: %s", out_dir)
    return summary


@hydra.main(config_path="conf", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> float:
    summary = evaluate(cfg)
    return float("nan") if summary["miou"] is None else float(summary["miou"])


if __name__ == "__main__":
    main()
