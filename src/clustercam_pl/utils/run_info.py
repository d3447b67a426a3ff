"""What a run ran on, written as ``env.json`` in its run folder.

A number means little without the code, libraries, devices, batch and precision that produced it;
a run folder copied off a cluster keeps them. The global batch matters twice: the reference recipes
derive the learning rate from it (``optim.lr_per_512 x batch / 512``), so a run on another device
count or batch is another recipe, and :func:`batch_note` says so at start.

Plain arguments only (entry points read the config and pass values here).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import clustercam_pl

PACKAGES = ("torch", "torchvision", "lightning", "timm", "hydra-core", "numpy")


def source_commit(package_dir: Path | None = None) -> dict[str, Any]:
    """The git commit (and whether the tree has uncommitted changes) when the package runs from a checkout.

    Only a ``<checkout>/src/clustercam_pl`` layout counts: an installed copy inside some other
    repository (a venv in a project folder) is not that repository's code.
    """
    pkg = Path(package_dir or Path(clustercam_pl.__file__).parent).resolve()
    root = pkg.parents[1]
    if pkg.parent.name != "src" or not (root / ".git").exists():
        return {"git_commit": None, "git_dirty": None}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):  # no git executable, or not a readable repository
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit or None, "git_dirty": bool(status.strip())}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(accelerator: str) -> dict[str, Any]:
    """Names and count of the devices of this kind visible to the process (CUDA: every visible GPU)."""
    import torch

    cuda = torch.cuda.is_available()
    info: dict[str, Any] = {
        "accelerator": accelerator,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if cuda and "cpu" not in accelerator.lower():
        info["names"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    else:
        info["names"] = [info["cpu"]]
    info["count"] = len(info["names"])
    return info


def collect(
    *,
    accelerator: str,
    world_size: int = 1,
    global_batch: int | None = None,
    reference_batch: int | None = None,
    precision: str | None = None,
    argv: Sequence[str] = (),
    overrides: Sequence[str] = (),
    lr_for_batch: Callable[[int], float] | None = None,
) -> dict[str, Any]:
    """Everything env.json holds; ``lr_for_batch`` (the recipe's batch -> learning rate) feeds the batch note."""
    per_device = global_batch // world_size if global_batch and global_batch % world_size == 0 else None
    return {
        "clustercam_pl": {"version": clustercam_pl.__version__, "path": str(Path(clustercam_pl.__file__).parent),
                          **source_commit()},
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "host": platform.node(),
        "packages": {name: _version(name) for name in PACKAGES},
        "devices": device_info(accelerator),
        "world_size": int(world_size),
        "batch": {
            "per_device": per_device,
            "global": global_batch,
            "reference": reference_batch,
            "note": batch_note(global_batch, reference_batch, lr_for_batch),
        },
        "precision": precision,
        "command": shlex.join(argv),
        "overrides": list(overrides),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def batch_note(
    global_batch: int | None, reference_batch: int | None, lr_for_batch: Callable[[int], float] | None = None
) -> str | None:
    """A sentence when the global batch is not the experiment's reference batch (None when it is, or unknown)."""
    if not global_batch or not reference_batch or int(global_batch) == int(reference_batch):
        return None
    text = f"global batch {global_batch} differs from the experiment's reference batch {reference_batch}"
    if lr_for_batch is not None:
        lr, ref_lr = lr_for_batch(int(global_batch)), lr_for_batch(int(reference_batch))
        if lr != ref_lr:
            text += (f": the learning rate the recipe derives (optim.lr_per_512 x batch / 512) is {lr:.3g} "
                     f"instead of {ref_lr:.3g}")
        else:
            text += f": the learning rate is set (optim.lr={lr:.3g}), so it is not rescaled, but it was tuned at"
            text += f" batch {reference_batch}"
    return text + f". To train the recipe's batch: data.global_batch_size={reference_batch}"


def summary_line(info: dict[str, Any]) -> str:
    """The one line logged at start."""
    pkg, dev, batch = info["clustercam_pl"], info["devices"], info["batch"]
    src = ""
    if pkg.get("git_commit"):
        src = f" (git {pkg['git_commit'][:10]}{', uncommitted changes' if pkg.get('git_dirty') else ''})"
    torch_v = info["packages"].get("torch")
    cuda = f", CUDA {dev['cuda']}, cuDNN {dev['cudnn']}" if dev.get("cudnn") else ""
    names = sorted(set(dev["names"]))
    per_device = batch["per_device"] if batch["per_device"] is not None else "?"
    return (f"env: clustercam_pl {pkg['version']}{src} | Python {info['python']} | torch {torch_v}{cuda} | "
            f"{dev['accelerator']}: {dev['count']} x {', '.join(names)} | world size {info['world_size']} | "
            f"batch {batch['global']} global, {per_device} per device | precision {info['precision']}")
