"""The ClusterCAM network as plain `nn.Module`s, shaped by one `NetConfig`.

Checkpoints (reference, framework, ImageNet initialisation) are read and written in
`clustercam_pl.checkpoint`.
"""

from __future__ import annotations

from clustercam_pl.models.clustercam import CAMInputs, ClusterCAMNet, ClusterCAMOutput
from clustercam_pl.models.config import NetConfig

__all__ = ["CAMInputs", "ClusterCAMNet", "ClusterCAMOutput", "NetConfig"]
