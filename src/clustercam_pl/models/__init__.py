"""The ClusterCAM network as plain `nn.Module`s, and its weights in and out."""

from clustercam_pl.models.clustercam import ClusterCAMNet, ClusterCAMOutput
from clustercam_pl.models.weights import (
    from_official_checkpoint,
    load_checkpoint_file,
    load_imagenet_weights,
)

__all__ = [
    "ClusterCAMNet",
    "ClusterCAMOutput",
    "from_official_checkpoint",
    "load_checkpoint_file",
    "load_imagenet_weights",
]
