"""`load_checkpoint`: the one way to get a network from a checkpoint file of any kind."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from clustercam_pl.checkpoint.files import read_file
from clustercam_pl.checkpoint.framework import migrate
from clustercam_pl.checkpoint.reference import reference_net
from clustercam_pl.checkpoint.state_dict import load_state_dict_checked
from clustercam_pl.data.labels import COCO_CLASSES, VOC_CLASSES
from clustercam_pl.models import ClusterCAMNet, NetConfig
from clustercam_pl.models.config import MOVED_TO_CAM
from clustercam_pl.models.smp_net import SmpConfig, SmpSegNet

log = logging.getLogger(__name__)


@dataclass
class LoadedCheckpoint:
    """A network and what its file says: kind, training progress, CAM settings, class names."""

    net: ClusterCAMNet | SmpSegNet  # SmpSegNet: a stage-two smp network (clustercam.network = "smp")
    path: str
    kind: str  # "framework" (Lightning, this package) or "reference" (official ClusterCAM)
    epoch: int | None
    global_step: int | None
    cam: dict[str, Any] = field(default_factory=dict)  # CAMConfig fields the run trained with ({} for reference)
    class_names: list[str] | None = None  # K names; None when the file does not say
    hparams: dict[str, Any] = field(default_factory=dict)  # the run's hyper-parameters ({} for reference)

    def check_background(self, has_background: bool, dataset: str) -> None:
        """Refuse data whose label convention differs from the network's (``background``: with a background
        class the network predicts K + 1 label values, without K; see :mod:`clustercam_pl.data.labels`)."""
        if self.net.cfg.background != has_background:
            says = "has a background class" if self.net.cfg.background else "has no background class"
            data = "has one" if has_background else "has none"
            raise ValueError(f"{self.path} was trained on data that {says}, but data={dataset} {data}: "
                             "pass the data config the network was trained with")


    def check_channels(self, in_channels: int, normalization: tuple[Sequence[float], Sequence[float]] | None,
                       dataset: str) -> None:
        """Refuse data of another band count than the network's (`NetConfig.in_chans`); warn when the data's
        per-band mean / std differ from those the network was trained with (another preparation)."""
        cfg = self.net.cfg
        channels = int(getattr(cfg, "in_chans", 3))
        if channels != in_channels:
            raise ValueError(f"{self.path} takes {channels}-band images, but data={dataset} has {in_channels} bands: "
                             "pass the data config the network was trained with")
        own = cfg.normalization if hasattr(cfg, "normalization") else None
        if normalization is not None and own is not None and any(
                abs(a - b) > 1e-4 for x, y in zip(own, normalization, strict=True) for a, b in zip(x, y, strict=True)):
            log.warning("%s was trained with the band mean / std %s, data=%s is normalised with %s (prepared again?)",
                        self.path, [list(v) for v in own], dataset, [list(v) for v in normalization])


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, Tensor) and value.numel() == 1:
        return int(value.item())
    return None


def resolve_class_names(num_classes: int, stored: Sequence[str] | None = None) -> list[str]:
    """The K class names of a network: the ones its checkpoint stores, else by K the VOC names (20), the
    COCO names (80), otherwise ``class_1 .. class_K``.

    Reference checkpoints (and framework files written before format 2) store none; stored names of the
    wrong length are ignored with a warning.
    """
    if stored is not None:
        if len(stored) == num_classes:
            return [str(n) for n in stored]
        log.warning("the checkpoint names %d classes for a network of %d; naming them by K instead",
                    len(stored), num_classes)
    if num_classes == len(VOC_CLASSES):
        return list(VOC_CLASSES)
    if num_classes == len(COCO_CLASSES):
        return list(COCO_CLASSES)
    return [f"class_{i}" for i in range(1, num_classes + 1)]


def _framework_net(checkpoint: Mapping[str, Any], source: str) -> ClusterCAMNet | SmpSegNet:
    """The network of a migrated framework checkpoint, rebuilt from its stored config (no Hydra needed)."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, Mapping):
        raise ValueError(f"{source} has no state_dict: the file is damaged; copy it again or pass another checkpoint")
    section = checkpoint["clustercam"]
    network = section.get("network", "clustercam")
    if network == "smp":  # weights come from the state dict below, not from the hub
        net: ClusterCAMNet | SmpSegNet = SmpSegNet(
            SmpConfig.from_dict({**section["net_config"], "encoder_weights": None}, source))
    elif network == "clustercam":
        net = ClusterCAMNet(NetConfig.from_dict(section["net_config"], source))
    else:
        raise ValueError(f"{source}: clustercam.network={network!r} is not a network this clustercam_pl builds "
                         "('clustercam' or 'smp'): upgrade clustercam_pl or pass another checkpoint")
    sd = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    load_state_dict_checked(net, sd, source)
    return net


def load_checkpoint(path: str | os.PathLike, **reference_overrides: Any) -> LoadedCheckpoint:
    """Read a checkpoint once and rebuild its network (on the CPU, eval mode).

    A file with a `clustercam` section is a framework checkpoint (any format; migrated on read); anything
    else is treated as a reference checkpoint, whose `reference_overrides` set the `NetConfig` fields
    tensor shapes cannot tell. They are refused for framework checkpoints, which carry their own config.
    """
    source = str(path)
    obj = read_file(path)  # FileNotFoundError / ValueError naming the file
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source}: expected a checkpoint dict, got {type(obj).__name__}")
    if "clustercam" in obj:
        if reference_overrides:
            raise ValueError(
                f"{source} is a framework checkpoint (it stores its own network config); "
                f"net_overrides={reference_overrides} only apply to reference checkpoints"
            )
        ckpt = migrate(obj, source)
        net = _framework_net(ckpt, source)
        epoch, step = _int_or_none(ckpt.get("epoch")), _int_or_none(ckpt.get("global_step"))
        hp = dict(ckpt.get("hyper_parameters") or {})
        names = ckpt["clustercam"].get("class_names")
        return LoadedCheckpoint(net.eval(), source, "framework", epoch, step, dict(hp.get("cam") or {}), names, hp)
    if moved := [k for k in reference_overrides if k in MOVED_TO_CAM]:
        raise ValueError(f"net_overrides {moved} are CAM settings now: pass cam.{moved[0]}=... instead")
    try:
        net = reference_net(obj, source, **reference_overrides)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(
            f"{source} is neither a clustercam_pl checkpoint (no 'clustercam' section) nor a loadable "
            f"reference checkpoint: {e}. For reference checkpoints, settings that tensor shapes cannot "
            "tell are passed as net_overrides (e.g. +net_overrides.cluster_grid=[3,3])."
        ) from e
    epoch = _int_or_none(obj.get("epoch"))
    if epoch is None:  # the reference saves checkpoint_{epoch}.pth
        m = re.search(r"checkpoint_(\d+)\.pth$", Path(source).name)
        epoch = int(m.group(1)) if m else None
    return LoadedCheckpoint(net.eval(), source, "reference", epoch, None)
