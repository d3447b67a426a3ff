"""A standard segmentation network (segmentation-models-pytorch) behind ClusterCAMNet's interface.

Stage two can train a DeepLabV3+ (or any smp architecture, with a timm encoder ``tu-<name>``) on fixed
labels. `SmpSegNet` answers what prediction, validation, eval and predict ask of a network: ``cfg.num_classes``,
``min_input_side`` and ``forward(x) -> (seg_logits, cls_logits)``, so none of them branches on the kind.
Its class scores are not learned: ``cls_logits`` is the logit of each class's largest per-pixel
probability (an image-level score read off the segmentation, for mAP and predictions.jsonl).

smp (the ``stage2`` extra) is imported when such a network is built, not with this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clustercam_pl.data.labels import class_offset, num_labels
from clustercam_pl.models.clustercam import ClusterCAMOutput
from clustercam_pl.utils.files import names_weights_file
from clustercam_pl.utils.imports import optional_import


@dataclass(frozen=True)
class SmpConfig:
    """What rebuilds an smp network: ``smp.create_model(arch, encoder_name, encoder_weights,
    classes=num_labels, **extra)`` (K + 1 label values with a background class, K without; see `NetConfig`)."""

    num_classes: int
    arch: str = "DeepLabV3Plus"
    encoder_name: str = "tu-resnet50"
    # Pretrained encoder weights: smp's name ("imagenet", from the hub), a local file (.pth / .pt / .bin /
    # .safetensors, loaded into the encoder at the start of training: checkpoint.load_smp_encoder_weights),
    # or None (random).
    encoder_weights: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    background: bool = True  # set from the dataset kind; a checkpoint without it loads as True

    @property
    def num_labels(self) -> int:
        """Label values the network predicts: K + 1 with a background class, K without."""
        return num_labels(self.num_classes, self.background)

    @property
    def hub_weights(self) -> str | None:
        """What smp itself downloads: ``encoder_weights`` unless it names a local file."""
        w = self.encoder_weights
        return None if w is None or names_weights_file(w) else w

    @property
    def encoder_file(self) -> str | None:
        """``encoder_weights`` when it names a local file, which smp does not read (see `hub_weights`)."""
        w = self.encoder_weights
        return w if w is not None and names_weights_file(w) else None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> SmpConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(d) - known):
            raise ValueError(f"{source}: unknown smp network keys {unknown}; known: {sorted(known)}")
        return cls(**d)


def _import_smp() -> Any:
    return optional_import("segmentation_models_pytorch", "the smp stage-two network", "segmentation-models-pytorch",
                           "stage2")


class SmpSegNet(nn.Module):
    """An smp segmentation model answering like `ClusterCAMNet` (seg logits; class scores from them)."""

    def __init__(self, config: SmpConfig) -> None:
        super().__init__()
        self.cfg = config
        smp = _import_smp()
        try:
            self.model = smp.create_model(config.arch, encoder_name=config.encoder_name,
                                          encoder_weights=config.hub_weights, classes=config.num_labels,
                                          **dict(config.extra))
        except OSError as e:  # huggingface_hub's errors of a download without network are OSErrors
            if config.hub_weights is None:
                raise
            raise RuntimeError(
                f"could not get the {config.encoder_name} encoder's '{config.hub_weights}' weights from the hub "
                f"({type(e).__name__}). Without network, save them where there is network "
                f"(torch.save(smp.create_model('{config.arch}', encoder_name='{config.encoder_name}', "
                f"encoder_weights='{config.hub_weights}').encoder.state_dict(), 'encoder.pth')) and pass the file: "
                "model.smp.encoder_weights=/path/to/encoder.pth") from e
        self.stride = int(getattr(self.model.encoder, "output_stride", 32))
        self.compiled = False

    @property
    def min_input_side(self) -> int:
        """Any side works (inputs are padded to the encoder's stride); one stride is the smallest useful."""
        return self.stride

    def compile_parts(self, **compile_kwargs: Any) -> None:
        """`torch.compile` the smp model in place (state-dict keys unchanged)."""
        self.model.compile(**compile_kwargs)
        self.compiled = True

    def forward(self, x: Tensor, with_seg: bool = True) -> ClusterCAMOutput:
        """x (B, 3, H, W) ImageNet-normalised -> seg_logits (B, C, H, W) (C = cfg.num_labels), cls_logits (B, K).

        Inputs are padded bottom/right with 0 (the mean colour) to a multiple of the encoder's stride,
        which smp requires, and the logits cropped back.
        """
        H, W = x.shape[-2:]
        ph, pw = -H % self.stride, -W % self.stride
        logits = self.model(F.pad(x, (0, pw, 0, ph)))[..., :H, :W]  # (B, C, H, W)
        first = class_offset(self.cfg.background)  # the classes' channels: 1..K with background, 0..K-1 without
        probs = logits.float().softmax(1)[:, first:].amax(dim=(2, 3))  # (B, K) largest per-class probability
        cls_logits = torch.logit(probs, eps=1e-6)
        return ClusterCAMOutput(cls_logits=cls_logits, patch_logits=cls_logits, seg_logits=logits,
                                features=logits, c2p=logits.new_zeros(0), attention=None)
