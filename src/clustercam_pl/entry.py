"""What the Hydra entry points share: building objects from the config, checks, run-folder state.

Only entry points (train, eval, pseudo_labels, bench) import this module; everything below them
takes plain arguments.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("clustercam_pl")


def round_mul(a: float, b: float) -> int:
    """``round(a * b)``: config arithmetic such as a warm-up as a fraction of the run,
    ``seg_start_epoch: ${round_mul:${trainer.max_epochs},0.625}``."""
    return round(float(a) * float(b))


# Registered on import: every entry point imports this module before composing its config.
if not OmegaConf.has_resolver("round_mul"):
    OmegaConf.register_new_resolver("round_mul", round_mul)


def instantiate_dict(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every `_target_` entry of a group such as callbacks or logger (None/empty: none)."""
    if not cfg:
        return []
    return [instantiate(v) for v in cfg.values() if isinstance(v, DictConfig) and "_target_" in v]


def check_config(cfg: DictConfig) -> None:
    """Errors a run would otherwise hit late (or never notice), raised before anything is built."""
    grid = list(cfg.net.cluster_grid)
    crop = cfg.data.get("crop_size") or (cfg.data.get("synthetic") or {}).get("image_size")
    patch = cfg.net.patch_size
    blocks = cfg.net.cluster_blocks
    if crop is not None and (blocks is None or len(blocks) > 0):
        side = int(crop) // int(patch)
        if grid[0] > side or grid[1] > side:
            raise ValueError(
                f"net.cluster_grid={grid} is larger than the patch grid {side}x{side} of "
                f"data.crop_size={crop} with net.patch_size={patch}"
            )
    strategy = str(cfg.trainer.get("strategy", ""))
    if _is_multirun() and strategy.startswith("ddp") and "spawn" not in strategy and _devices(cfg) > 1:
        launcher = HydraConfig.get().runtime.choices.get("hydra/launcher", "basic")
        if launcher in ("basic", "joblib"):
            raise ValueError(
                "trainer.strategy=ddp inside a --multirun sweep with the "
                f"{launcher} launcher re-launches the sweep in every rank. Use trainer=ddp_spawn, "
                "trainer.devices=1 per job, or hydra/launcher=submitit_slurm."
            )


def _devices(cfg: DictConfig) -> int:
    d = cfg.trainer.get("devices", 1)
    return len(d) if isinstance(d, list | tuple) or OmegaConf.is_list(d) else int(d) if str(d).isdigit() else 2


def _is_multirun() -> bool:
    try:
        return str(HydraConfig.get().mode) == "RunMode.MULTIRUN"
    except ValueError:
        return False


def run_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


def resolve_ckpt(cfg: DictConfig) -> str | None:
    """`ckpt_path=auto` resumes <run dir>/checkpoints/last.ckpt when it exists; a path must exist."""
    ckpt = cfg.get("ckpt_path")
    if ckpt in (None, "", "none", "null"):
        return None
    if ckpt == "auto":
        last = run_dir(cfg) / "checkpoints" / "last.ckpt"
        if last.is_file():
            log.info("resuming from %s", last)
            return str(last)
        return None
    if not Path(ckpt).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt} does not exist")
    return str(ckpt)


def attach_wandb_id(cfg: DictConfig) -> None:
    """Give the wandb logger a run id stored in the run folder, so a resumed run continues it."""
    if not cfg.get("logger") or "wandb" not in cfg.logger:
        return
    id_file = run_dir(cfg) / "wandb_id.txt"
    if cfg.logger.wandb.get("id"):
        run_id = str(cfg.logger.wandb.id)
    elif id_file.is_file():
        run_id = id_file.read_text().strip()
    else:
        run_id = uuid.uuid4().hex[:12]
    id_file.parent.mkdir(parents=True, exist_ok=True)
    id_file.write_text(run_id + "\n")
    with open_dict(cfg):
        cfg.logger.wandb.id = run_id
        cfg.logger.wandb.resume = "allow"


def open_dict(cfg: DictConfig):
    from omegaconf import open_dict as _open_dict

    return _open_dict(cfg)


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        out[k] = f if math.isfinite(f) else float("nan")
    return out


def write_metrics(path: Path, metrics: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)
    return path


def iou_table(per_class: list[float], names: list[str]) -> str:
    rows = [f"{'class':<16} {'IoU':>6}"]
    rows += [f"{n:<16} {100 * v:6.2f}" for n, v in zip(names, per_class, strict=False)]
    return "\n".join(rows)
