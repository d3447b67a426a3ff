"""What the Hydra entry points share: building objects from the config, checks, run-folder state,
the protocol of the forward-only commands and config values as plain Python.

Only the Hydra entry points (train, eval, export_labels, predict, bench) import this module; everything
below them takes plain arguments.
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from clustercam_pl.checkpoint import find_one_checkpoint
from clustercam_pl.data.registry import dataset_kind
from clustercam_pl.inference.pool import available_cores
from clustercam_pl.inference.protocol import Protocol
from clustercam_pl.tasks.sweep import parse_override
from clustercam_pl.utils import run_info
from clustercam_pl.utils.checks import check_range
from clustercam_pl.utils.distributed import Launch, launch
from clustercam_pl.utils.results import write_metrics

log = logging.getLogger("clustercam_pl")
T = TypeVar("T")


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
    check_range("trainer.max_epochs", cfg.trainer.get("max_epochs"), ge=1, integer=True)  # the lr schedule's length
    grid = list(cfg.net.cluster_grid)
    patch = int(cfg.net.patch_size)
    side_key, crop = _training_side(cfg.data)
    if crop is not None and crop % patch:
        lower, upper = crop // patch * patch, (crop // patch + 1) * patch
        sizes = f"{side_key}={lower} or {side_key}={upper}" if lower >= patch else f"{side_key}={upper}"
        raise ValueError(
            f"{side_key}={crop} is not a multiple of net.patch_size={patch}: the network would see "
            f"{crop // patch}x{crop // patch} patches and their CAMs would be stretched over {crop} pixels, "
            f"misaligning the pseudo labels with the image; use {sizes}"
        )
    blocks = cfg.net.cluster_blocks
    if crop is not None and (blocks is None or len(blocks) > 0):
        side = crop // patch
        if grid[0] > side or grid[1] > side:
            raise ValueError(
                f"net.cluster_grid={grid} is larger than the patch grid {side}x{side} of "
                f"{side_key}={crop} with net.patch_size={patch}"
            )
    check_multirun_strategy(cfg)


def check_multirun_strategy(cfg: DictConfig) -> None:
    """Refuse the script-relaunching DDP inside a sweep whose launcher runs jobs in this process."""
    strategy = str(cfg.trainer.get("strategy", ""))
    if _is_multirun() and strategy.startswith("ddp") and "spawn" not in strategy and _devices(cfg) > 1:
        launcher = HydraConfig.get().runtime.choices.get("hydra/launcher", "basic")
        if launcher in ("basic", "joblib"):
            raise ValueError(
                "trainer.strategy=ddp inside a --multirun sweep with the "
                f"{launcher} launcher re-launches the sweep in every rank. Use trainer=ddp_spawn, "
                "trainer.devices=1 per job, or hydra/launcher=submitit_slurm."
            )


def _training_side(data: DictConfig) -> tuple[str, int | None]:
    """The config key that sets the side of the square training images, and its value (None: images
    keep their own sizes): a fact of the dataset kind."""
    return dataset_kind(str(data.get("dataset"))).training_side(data)


def _devices(cfg: DictConfig) -> int:
    d = cfg.trainer.get("devices", 1)
    return len(d) if isinstance(d, list | tuple) or OmegaConf.is_list(d) else int(d) if str(d).isdigit() else 2


def _is_multirun() -> bool:
    try:
        return str(HydraConfig.get().mode) == "RunMode.MULTIRUN"
    except ValueError:
        return False


def net_overrides(cfg: DictConfig) -> dict[str, Any]:
    """`net_overrides` as a plain dict (reference checkpoints only)."""
    value = cfg.get("net_overrides")
    return dict(OmegaConf.to_container(value, resolve=True)) if value is not None else {}


def as_list(value: Any) -> str | list[str]:
    """A path setting that may be one value or a list (`ckpt_path`, `input`): str, or list of str."""
    if isinstance(value, ListConfig | list | tuple):
        return [str(v) for v in value]
    return str(value) if value is not None else ""


def protocol_from_config(cfg: DictConfig) -> Protocol:
    """The `eval` group as a `Protocol`. `postprocess` is a mapping {key: step config} in order (what the
    defaults list `/postprocess@postprocess.<key>: <name>` builds) or a list of step configs."""
    steps = OmegaConf.to_container(cfg.postprocess, resolve=True) if cfg.get("postprocess") is not None else []
    if isinstance(steps, dict):
        steps = [{"name": key, **value} if "name" not in value else value for key, value in steps.items()]
    return Protocol.from_values(cfg.name, list(cfg.scales), cfg.flip, steps)


def loader_workers(cfg: DictConfig, processes_per_machine: int) -> int:
    """DataLoader workers per process: `num_workers`, or (null) `data.num_workers` capped at the cores
    this machine's processes share, so a small machine is not asked for more workers than it has."""
    if cfg.get("num_workers") is not None:
        return int(cfg.num_workers)
    cores = max(1, available_cores() // max(int(processes_per_machine), 1))
    return min(int(cfg.data.num_workers), cores)


def launch_settings(cfg: DictConfig) -> Launch:
    """How many processes a forward-only command runs on: the `trainer` group (as training) and `device`."""
    t = cfg.get("trainer") or {}
    devices = t.get("devices", 1)
    devices = tuple(int(d) for d in devices) if OmegaConf.is_list(devices) else devices
    return Launch(accelerator=str(t.get("accelerator", "auto")), devices=devices,
                  num_nodes=int(t.get("num_nodes", 1)), strategy=str(t.get("strategy", "auto")),
                  device=str(cfg.get("device", "auto")))


def resolved_copy(cfg: DictConfig) -> DictConfig:
    """`cfg` with every interpolation resolved here (spawned processes have no Hydra run to resolve
    `${hydra:...}` against)."""
    copy = cfg.copy()
    try:
        OmegaConf.resolve(copy)
    except Exception:  # e.g. paths.output_dir outside a Hydra run: resolve what resolves, key by key
        for key in list(copy.keys()):
            node = copy._get_node(key)
            try:
                if OmegaConf.is_config(node):
                    OmegaConf.resolve(node)
                else:
                    copy[key] = copy[key]
            except Exception as e:
                log.debug("%s stays unresolved: %s", key, e)
    return copy



def launch_command(cfg: DictConfig, fn: Callable[..., T]) -> T:
    """Run a batch command's `fn(ranks, cfg)` on the processes `cfg.trainer` asks for (one: here), after
    refusing a launch the sweep cannot host; spawned processes get the config resolved here."""
    check_multirun_strategy(cfg)
    settings = launch_settings(cfg)
    return launch(settings, fn, cfg if settings.single else resolved_copy(cfg))

def run_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


def resolve_ckpt(cfg: DictConfig) -> str | None:
    """`ckpt_path=auto` resumes <run dir>/checkpoints/last.ckpt when it exists; else a file or run folder."""
    ckpt = cfg.get("ckpt_path")
    if ckpt in (None, "", "none", "null"):
        return None
    if ckpt == "auto":
        last = run_dir(cfg) / "checkpoints" / "last.ckpt"
        if last.is_file():
            log.info("resuming from %s", last)
            return str(last)
        return None
    return str(find_one_checkpoint(str(ckpt)))


WANDB_ID_FILE = "wandb_id.txt"


def attach_wandb_id(cfg: DictConfig) -> str | None:
    """Give the wandb logger a run id (the one stored in the run folder, so a resumed run continues it) and
    return it, or None without a wandb logger. Nothing is written here: the caller stores the id in
    ``<run dir>/wandb_id.txt`` once it owns the run folder (a refused second run must not touch it)."""
    if not cfg.get("logger") or "wandb" not in cfg.logger:
        return None
    id_file = run_dir(cfg) / WANDB_ID_FILE
    if cfg.logger.wandb.get("id"):
        run_id = str(cfg.logger.wandb.id)
    elif id_file.is_file():
        run_id = id_file.read_text().strip()
    else:
        run_id = uuid.uuid4().hex[:12]
    with open_dict(cfg):
        cfg.logger.wandb.id = run_id
        cfg.logger.wandb.resume = "allow"
        sweep = sweep_job()
        if sweep is not None:  # the jobs of one sweep: one wandb group, the swept keys in the run config
            name, values = sweep
            if not cfg.logger.wandb.get("group"):
                cfg.logger.wandb.group = name
            cfg.logger.wandb.config = {"sweep": name, **{f"sweep/{k}": v for k, v in values.items()}}
    return run_id


def task_overrides() -> list[str]:
    """This run's command-line overrides as Hydra recorded them ([] outside a Hydra run)."""
    try:
        return [str(o) for o in HydraConfig.get().overrides.task]
    except ValueError:
        return []


def sweep_job() -> tuple[str, dict[str, str]] | None:
    """Inside a --multirun job: the sweep's name (its folder's) and this job's values of the swept keys.

    Swept keys: the sweep overrides of the command line (``a=1,2``, ``range(...)``) as the launcher saved
    them in <sweep dir>/multirun.yaml, and the sweeper's ``params`` (optuna's search space).
    """
    if not _is_multirun():
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hc = HydraConfig.get()
    swept = set((hc.sweeper.get("params") or {}).keys())
    spec = Path(hc.sweep.dir) / "multirun.yaml"
    if spec.is_file():
        task = OmegaConf.load(spec).hydra.overrides.task
        swept |= {o.key_or_group for o in OverridesParser.create().parse_overrides(list(task)) if o.is_sweep_override()}
    values = dict(parse_override(o) for o in task_overrides())
    return Path(hc.sweep.dir).name, {k: v for k, v in values.items() if k in swept}


def record_env(
    cfg: DictConfig,
    out_dir: Path,
    *,
    accelerator: str,
    world_size: int = 1,
    global_batch: int | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """Write <out_dir>/env.json (run_info.collect), log its line, and warn when the global batch is not the
    experiment's ``reference_batch_size``. Call it on rank 0 only."""
    optim = instantiate(cfg.optim, _convert_="all") if cfg.get("optim") and "_target_" in cfg.optim else None
    info = run_info.collect(
        accelerator=accelerator,
        world_size=world_size,
        global_batch=global_batch,
        reference_batch=cfg.get("reference_batch_size"),
        precision=precision,
        argv=sys.orig_argv,  # the interpreter's own command line: `python -m clustercam_pl.train ...`
        overrides=task_overrides(),
        lr_for_batch=getattr(optim, "base_lr", None),
    )
    write_metrics(out_dir / "env.json", info)
    log.info(run_info.summary_line(info))
    if info["batch"]["note"]:
        log.warning(info["batch"]["note"])
    return info
