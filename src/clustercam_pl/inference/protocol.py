"""An evaluation protocol and the one path from a batch of images to label maps.

A `Protocol` is the input scales and flip of the network's forward pass (`network.predict`) and the
ordered post-processing steps after it (`inference.steps`: the dense CRF, superpixels, SAM, ...).
`label_maps` and `postprocess` are what evaluation, prediction and the label export call: the
network's probabilities of each image, cropped to its own size, go through the steps (in a
`StepPool` of worker processes or inline) and come back as (H, W) uint8 label maps. Without steps
the label map is the argmax, taken where the probabilities are (the GPU).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clustercam_pl.inference.crf import to_uint8_image
from clustercam_pl.inference.network import predict
from clustercam_pl.inference.pool import StepPool
from clustercam_pl.inference.steps import Sample, Step, build_steps, step_config
from clustercam_pl.models import ClusterCAMNet


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol: input scales, flip, post-processing steps (in order)."""

    name: str
    scales: tuple[float, ...]
    flip: bool
    steps: tuple[Step, ...] = ()

    @classmethod
    def from_values(
        cls, name: str, scales: Sequence[float], flip: bool,
        postprocess: Sequence[Mapping[str, Any]] | None = None,
    ) -> Protocol:
        """From plain config values; `postprocess`: step configs ``{name: crf, ...}`` in order."""
        values = tuple(float(s) for s in scales)
        if not values or any(s <= 0 for s in values):
            raise ValueError(f"eval.scales must be positive numbers, got {list(scales)}")
        return cls(str(name), values, bool(flip), build_steps(postprocess))

    def require(self) -> None:
        """Fail at once (before any checkpoint is read) when a step's optional dependency is missing."""
        for step in self.steps:
            if hasattr(step, "require"):
                step.require()

    def describe(self) -> str:
        scales = ", ".join(f"{s:g}" for s in self.scales)
        parts = [
            f"protocol {self.name}: scales [{scales}]"
            + (" (input resized bilinearly, align_corners=True), max fusion of softmax"
               if len(self.scales) > 1 else ", softmax of the decoder"),
            "with horizontal flip" if self.flip else "no flip",
        ]
        for step in self.steps:
            parts.append(step.describe() if hasattr(step, "describe") else _plain(step))
        if not self.steps:
            parts.append("no post-processing")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """What meta.json and the summaries record; `from_values(**as_dict())` gives this protocol back."""
        return {"name": self.name, "scales": list(self.scales), "flip": self.flip,
                "postprocess": [step_config(s) for s in self.steps]}


def _plain(step: Step) -> str:
    settings = {k: v for k, v in step_config(step).items() if k != "name"}
    return f"{step.name} ({', '.join(f'{k} {v}' for k, v in settings.items())})" if settings else step.name


@torch.no_grad()
def network_crops(
    net: ClusterCAMNet, images: Tensor, image_size: Tensor | None, protocol: Protocol
) -> Iterator[tuple[Tensor, Tensor]]:
    """(image (3, h, w), probabilities (C, h, w)) of every image of a padded batch (B, 3, H, W),
    each cropped to its `image_size` (B, 2) (None: the batch's size)."""
    probs = predict(net, images, protocol.scales, protocol.flip, image_size).probs  # (B, C, H, W)
    for i in range(images.shape[0]):
        h, w = (int(image_size[i, 0]), int(image_size[i, 1])) if image_size is not None else images.shape[-2:]
        yield images[i, :, :h, :w], probs[i, :, :h, :w]


def postprocess(
    items: Iterable[tuple[str, Tensor, Tensor]], protocol: Protocol, pool: StepPool | None = None, chunk: int = 1,
    normalization: tuple[Sequence[float], Sequence[float]] | None = None, background: bool = True,
) -> Iterator[tuple[str, np.ndarray]]:
    """(key, label map (h, w) uint8) of every (key, image (N, h, w) normalised, probabilities (C, h, w)),
    in order, through the protocol's steps.

    The steps (CRF, superpixels, SAM) see an RGB image: the first 3 bands, de-normalised with
    `normalization` ((mean, std) of the image's channels; None: ImageNet's). `background`: label 0 is the
    background class (the network's `cfg.background`), which label steps such as SAM prompts leave alone.

    With steps, an image's sample goes to `pool` (None: run inline) as soon as it comes, so the caller's
    next forward pass overlaps the workers; `chunk` samples travel to a worker together.
    """
    if not protocol.steps:
        for key, _, probs in items:
            yield key, probs.argmax(dim=0).to(torch.uint8).cpu().numpy()
        return
    pool = pool if pool is not None else StepPool(protocol.steps, 0)
    if pool.steps != protocol.steps:
        raise ValueError(f"the pool runs {pool.steps}, the protocol {protocol.name} asks for {protocol.steps}")
    mean, std = normalization or (None, None)
    mean3, std3 = (None, None) if mean is None or std is None else (mean[:3], std[:3])
    samples = ((key, Sample(to_uint8_image(image[:3], mean3, std3), probs.float().cpu().numpy(), key=key,
                            background=background))
               for key, image, probs in items)  # (h, w, 3) uint8, (C, h, w) float32
    yield from pool.imap(samples, chunk=chunk)


@torch.no_grad()
def label_maps(
    net: ClusterCAMNet, images: Tensor, image_size: Tensor | None, protocol: Protocol,
    pool: StepPool | None = None,
) -> list[np.ndarray]:
    """The label map (h, w) uint8 of every image of a padded batch (B, 3, H, W): network, crop, steps."""
    crops = network_crops(net, images, image_size, protocol)
    items = ((str(i), image, probs) for i, (image, probs) in enumerate(crops))
    return [labels for _, labels in postprocess(items, protocol, pool, normalization=input_normalization(net),
                                                      background=net.cfg.background)]


def input_normalization(net: Any) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) a network's inputs are normalised with (`NetConfig.normalization`); None: ImageNet's
    (a network whose config does not say, e.g. a stage-two smp network)."""
    cfg = getattr(net, "cfg", None)
    return cfg.normalization if hasattr(cfg, "normalization") else None
