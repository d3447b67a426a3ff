"""Refine a label set: `python -m clustercam_pl.refine labels=<folder> postprocess=<step> out_dir=<folder>`.

The library half is `clustercam_pl.tasks.refine`; `postprocess` is a step config of conf/postprocess/
(`postprocess.checkpoint=...` for SAM). With `audit=true` the labels before vs after are audited into
<out_dir>/audit. `run_refine(cfg)` is importable; `main` is the Hydra wrapper.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from clustercam_pl.entry import launch_command
from clustercam_pl.inference.steps import build_step
from clustercam_pl.tasks.audit import audit, recorded_split
from clustercam_pl.tasks.refine import refine_labels
from clustercam_pl.utils.distributed import Ranks


def run_refine(cfg: DictConfig) -> dict[str, Any]:
    return launch_command(cfg, _refine)


def _refine(ranks: Ranks, cfg: DictConfig) -> dict[str, Any]:
    dm = instantiate(cfg.data, _convert_="all")
    split = str(cfg.split or recorded_split(cfg.labels) or dm.train_split)
    step = build_step(OmegaConf.to_container(cfg.postprocess, resolve=True))
    labels = Path(str(cfg.labels))
    out_dir = Path(str(cfg.out_dir)) if cfg.get("out_dir") else labels.with_name(f"{labels.name}_{step.name}")
    summary = refine_labels(dm, split, labels, [step], out_dir, limit=cfg.get("limit"),
                            overwrite=bool(cfg.overwrite), ranks=ranks)
    if cfg.get("audit"):
        summary["audit"] = audit(dm, split, labels, out_dir / "audit", against=out_dir,
                                 n_examples=int(cfg.n_examples), limit=cfg.get("limit"), overwrite=True, ranks=ranks)
        if ranks.is_main:
            print((out_dir / "audit" / "summary.md").read_text(), flush=True)
    return summary


@hydra.main(config_path="conf", config_name="refine", version_base="1.3")
def main(cfg: DictConfig) -> int:
    summary = run_refine(cfg)
    return int(summary["num_images"])


if __name__ == "__main__":
    main()
