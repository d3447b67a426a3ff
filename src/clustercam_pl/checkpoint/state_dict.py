"""State dicts of any checkpoint kind: reading, unwrapping and loading them with errors that name tensors."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from clustercam_pl.checkpoint.files import read_file
from clustercam_pl.models import ClusterCAMNet


def read_weights(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a local weights file: `.safetensors`, or a torch file read with `weights_only=True`
    (`read_file`: a damaged file or one that would run code is refused naming it, never loaded unsafely)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    if path.suffix != ".safetensors":
        return unwrap_state_dict(read_file(path), str(path))
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:  # a truncated or foreign file: safetensors' own reason
        raise ValueError(f"cannot read weights {path}: it is damaged or not a safetensors file "
                         f"({type(e).__name__}: {str(e)[:160]}). Copy or download it again, or pass another "
                         "file") from e


def unwrap_state_dict(obj: Any, source: str) -> dict[str, Tensor]:
    """The tensors of `obj` or of `obj["model"]`, without DataParallel's `module.` prefix."""
    sd = obj
    if isinstance(sd, Mapping) and "model" in sd and isinstance(sd["model"], Mapping):
        sd = sd["model"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ValueError(f"{source}: expected a state dict (or {{'model': state_dict}}) of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_state_dict_checked(net: ClusterCAMNet, sd: Mapping[str, Tensor], source: str) -> None:
    """Strict load whose errors name each tensor and both shapes."""
    own = net.state_dict()
    problems = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in sd.items() if k in own and own[k].shape != v.shape
    ]
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if problems or missing or unexpected:
        cfg = net.cfg
        lines = [f"{source} does not fit the model (num_classes={cfg.num_classes}, "
                 f"embed_dim={cfg.embed_dim}, depth={cfg.depth}):"]
        lines += [f"  shape mismatch {p}" for p in problems[:10]]
        if missing:
            lines.append(f"  missing in checkpoint: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        if unexpected:
            lines.append(f"  not in model: {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
        raise ValueError("\n".join(lines))
    net.load_state_dict(sd)
