"""The ClusterCAM network as plain `nn.Module`s, shaped by one `NetConfig`.

Checkpoints (reference, framework, ImageNet initialisation) are read and written in
`clustercam_pl.checkpoint`.
"""

from __future__ import annotations

import warnings
from typing import Any

from clustercam_pl.models.clustercam import CAMInputs, ClusterCAMNet, ClusterCAMOutput
from clustercam_pl.models.config import NetConfig

__all__ = ["CAMInputs", "ClusterCAMNet", "ClusterCAMOutput", "NetConfig"]

# Names earlier versions exported here; they live in clustercam_pl.checkpoint now.
_MOVED = {"from_official_checkpoint": "from_official_checkpoint", "load_checkpoint_file": "read_file",
          "load_imagenet_weights": "load_imagenet_weights"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        warnings.warn(f"clustercam_pl.models.{name} moved to clustercam_pl.checkpoint.{_MOVED[name]}",
                      DeprecationWarning, stacklevel=2)
        from clustercam_pl import checkpoint  # deprecated alias: the one upward import

        return getattr(checkpoint, _MOVED[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
