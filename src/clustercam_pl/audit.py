"""Audit a label set: `python -m clustercam_pl.audit labels=<folder> [against=<folder>] data=... split=... out_dir=...`.

The library half is `clustercam_pl.tasks.audit`; this reads the config (conf/audit.yaml), launches the
processes of `cfg.trainer` and prints the summary. `run_audit(cfg)` is importable; `main` is the Hydra wrapper.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from clustercam_pl.entry import launch_command
from clustercam_pl.tasks.audit import audit, recorded_split
from clustercam_pl.utils.distributed import Ranks


def run_audit(cfg: DictConfig) -> dict[str, Any]:
    return launch_command(cfg, _audit)


def _audit(ranks: Ranks, cfg: DictConfig) -> dict[str, Any]:
    dm = instantiate(cfg.data, _convert_="all")
    split = str(cfg.split or recorded_split(cfg.labels) or dm.val_split)
    out_dir = Path(str(cfg.out_dir)) if cfg.get("out_dir") else Path(str(cfg.labels)) / "audit"
    report = audit(dm, split, str(cfg.labels), out_dir, against=cfg.get("against"), n_examples=int(cfg.n_examples),
                   use_cams=bool(cfg.cams), limit=cfg.get("limit"), overwrite=bool(cfg.overwrite), ranks=ranks)
    if ranks.is_main:
        print((out_dir / "summary.md").read_text(), flush=True)
    return report


@hydra.main(config_path="conf", config_name="audit", version_base="1.3")
def main(cfg: DictConfig) -> float:
    return float(run_audit(cfg)["sets"][0]["excluded"]["mean"]["iou"])


if __name__ == "__main__":
    main()
