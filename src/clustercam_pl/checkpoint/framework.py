"""Framework checkpoints (Lightning checkpoints of this package): the format, its history, migration.

Besides Lightning's keys (`state_dict`, `hyper_parameters`, `epoch`, ...) a framework checkpoint has a
`clustercam` section: `format`, `net_config` (the `NetConfig` dict the network is rebuilt from) and
`class_names`. Format history:

* 1: `net_config` holds the network's constructor arguments, including the CAM settings `cam_layers`
  and `p2p_refine`; `hyper_parameters.net` holds a copy.
* 2: `net_config` is a `NetConfig` dict; `cam_layers` / `p2p_refine` live in the CAM settings
  (`hyper_parameters.cam`); `class_names` names the classes; `hyper_parameters.net` still a copy.
* 3: the network config is stored once, in `clustercam.net_config` (no `hyper_parameters.net`).
  Optional `network`: "smp" when `net_config` is an `SmpConfig` (a stage-two segmentation network);
  absent (every older file): "clustercam". `net_config.background` (whether the data has a background
  class, so K + 1 decoder outputs) is absent in files written before it existed: such a file loads as
  `background=True` (the field's default), which is what every one of them was; no format change.

Older formats are migrated on every read (commands, `load_checkpoint`, and Lightning's resume through
`ClusterCAMLitModule.on_load_checkpoint`); newer ones are refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from clustercam_pl.models import ClusterCAMNet
from clustercam_pl.models.smp_net import SmpSegNet

FORMAT = 3
"""The framework checkpoint format this version writes; newer files are refused, older ones migrated."""

CAM_KEYS_OF_FORMAT_1 = ("cam_layers", "p2p_refine")
"""Keys of a format-1 `net_config` that format 2 moved to `hyper_parameters.cam` (frozen history)."""


def check_format(checkpoint: Mapping[str, Any], source: str) -> int:
    """The format of a framework checkpoint; ValueError naming `source` for a non-framework or newer file."""
    section = checkpoint.get("clustercam")
    if not isinstance(section, Mapping) or "format" not in section:
        raise ValueError(f"{source} is not a clustercam_pl checkpoint (no 'clustercam' section with a format)")
    fmt = section["format"]
    if isinstance(fmt, bool) or not isinstance(fmt, int) or fmt < 1:
        raise ValueError(f"{source}: clustercam.format={fmt!r} is not a checkpoint format (1..{FORMAT}); "
                         "the file is damaged: copy it again or pass another checkpoint")
    if fmt > FORMAT:
        raise ValueError(
            f"{source} has checkpoint format {fmt}, newer than this clustercam_pl reads ({FORMAT}): "
            "upgrade clustercam_pl"
        )
    if not isinstance(section.get("net_config"), Mapping):
        raise ValueError(f"{source}: clustercam.net_config is missing, so the network cannot be rebuilt; "
                         "the file is damaged: copy it again or pass another checkpoint")
    return fmt


def migrate(checkpoint: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The checkpoint in the current format: a new dict (tensors shared), the input is not changed."""
    fmt = check_format(checkpoint, source)
    out = dict(checkpoint)
    if fmt == FORMAT:
        return out
    section = dict(checkpoint["clustercam"])
    hp = dict(checkpoint.get("hyper_parameters") or {})
    if fmt == 1:
        net = dict(section["net_config"])
        cam = dict(hp.get("cam") or {})
        for key in CAM_KEYS_OF_FORMAT_1:
            if key in net:
                cam.setdefault(key, net.pop(key))
        hp["cam"] = cam
        section = {"net_config": net, "class_names": None}
    hp.pop("net", None)  # formats 1 and 2: a copy of clustercam.net_config
    if hp or "hyper_parameters" in checkpoint:
        out["hyper_parameters"] = hp
    out["clustercam"] = {**section, "format": FORMAT}
    return out


def framework_section(net: ClusterCAMNet | SmpSegNet, class_names: Sequence[str] | None) -> dict[str, Any]:
    """What a framework checkpoint carries besides Lightning's own keys."""
    section = {"format": FORMAT, "net_config": net.cfg.to_dict(),
               "class_names": None if class_names is None else [str(n) for n in class_names]}
    if isinstance(net, SmpSegNet):
        section["network"] = "smp"
    return section
