"""Every checkpoint kind in one package: how files are found, read, migrated, written and turned into networks.

Kinds:
* framework: a Lightning checkpoint of this package, with a `clustercam` section (`framework.py`:
  format history and migration); rebuilds its network from the stored `NetConfig` and carries its
  CAM settings and the dataset's class names.
* reference: the official ClusterCAM (`{"model": state_dict}`, `module.` prefixes from DataParallel);
  the architecture is read off the tensor shapes (`reference.py`).
* ImageNet ViT: DeiT / ViT / DINO / DINOv2 weights in timm's layout, the backbone's initialisation
  (`imagenet.py`); there too, a local file's weights for a stage-two smp network's encoder.

`load_checkpoint(path)` is the one way to get a network from a file of either checkpoint kind.
Files are read with `torch.load(..., weights_only=True)` and written atomically (`files.py`).
"""

from clustercam_pl.checkpoint.files import (
    SUFFIXES,
    AtomicCheckpointIO,
    find_checkpoints,
    find_one_checkpoint,
    read_file,
    save_atomic,
)
from clustercam_pl.checkpoint.framework import CAM_KEYS_OF_FORMAT_1, FORMAT, check_format, framework_section, migrate
from clustercam_pl.checkpoint.imagenet import (
    UNUSED_IMAGENET_KEYS,
    imagenet_state_dict,
    imagenet_to_ours,
    load_imagenet_weights,
    load_smp_encoder_weights,
    matching_presets,
)
from clustercam_pl.checkpoint.load import LoadedCheckpoint, load_checkpoint, resolve_class_names
from clustercam_pl.checkpoint.reference import infer_config, ours_to_reference, reference_net, reference_to_ours
from clustercam_pl.checkpoint.state_dict import load_state_dict_checked, read_weights, unwrap_state_dict
from clustercam_pl.utils.files import natural_key  # imported from here by tasks/evaluate.py

__all__ = [
    "CAM_KEYS_OF_FORMAT_1", "FORMAT", "SUFFIXES", "UNUSED_IMAGENET_KEYS", "AtomicCheckpointIO", "LoadedCheckpoint",
    "check_format", "find_checkpoints", "find_one_checkpoint", "framework_section", "imagenet_state_dict",
    "imagenet_to_ours", "infer_config", "load_checkpoint", "load_imagenet_weights", "load_smp_encoder_weights",
    "load_state_dict_checked", "matching_presets", "migrate", "natural_key", "ours_to_reference", "read_file",
    "read_weights", "reference_net",
    "reference_to_ours", "resolve_class_names", "save_atomic", "unwrap_state_dict",
]
