"""Post-processing steps: what turns a network's probabilities, or an existing label map, into the
final label map of an image (dense CRF, superpixel votes, SAM masks, ...).

One step is one module of this package that defines ``STEP``: a frozen dataclass whose fields are
its settings (picklable, so that a pool of worker processes can run it) and whose ``__call__``
takes a :class:`Sample` and returns a new one. The step's config is ``{name: <module>, **fields}``
(the files of ``conf/postprocess/``); :func:`build_step` finds the module by name, so adding a step
means one module here and one config file, nothing else.

Steps run in order. A step that needs probabilities (the CRF) refuses a sample without them; a
step that works on labels (superpixels, SAM) uses ``labels`` and leaves ``probs`` as None after it
(the probabilities no longer describe its result). The final label map is ``sample.labels``.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

IGNORE = 255  # the void value of label maps, as on every mask on disk


@dataclass
class Sample:
    """One image on its way through the steps."""

    image: np.ndarray  # (H, W, 3) uint8 RGB: what the steps look at
    probs: np.ndarray | None  # (C, H, W) float32 class probabilities (0 = background), None for label inputs
    labels: np.ndarray | None = None  # (H, W) uint8 class indices, IGNORE = void; None until argmax
    key: str = ""  # the image id, for messages and for steps that read per-image files
    background: bool = True  # label 0 is the background class; False: class 0 (data without background)

    def label_map(self) -> np.ndarray:
        """``labels``, or the argmax of ``probs`` when no step has set labels yet."""
        if self.labels is not None:
            return self.labels
        if self.probs is None:
            raise ValueError(f"image {self.key!r}: neither probabilities nor labels to post-process")
        return self.probs.argmax(0).astype(np.uint8)


class Step(Protocol):
    """What every ``STEP`` class provides."""

    name: ClassVar[str]

    def __call__(self, sample: Sample) -> Sample: ...


def available() -> list[str]:
    """The step names: the modules of this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def build_step(spec: Mapping[str, Any]) -> Step:
    """A step from its config ``{name: crf, n_iter: 10, ...}``; errors name the key and the choices."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in available():
        raise ValueError(f"postprocess step name={name!r} is unknown; available: {', '.join(available())}")
    cls = importlib.import_module(f"{__name__}.{name}").STEP
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(spec) - fields)
    if unknown:
        raise ValueError(f"postprocess step {name}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    return cls(**spec)


def build_steps(specs: Sequence[Mapping[str, Any]] | None) -> tuple[Step, ...]:
    return tuple(build_step(s) for s in specs or ())


def step_config(step: Step) -> dict[str, Any]:
    """The config a step was built from (for meta.json and reports): ``build_step`` of it is equal."""
    return {"name": step.name, **dataclasses.asdict(step)}  # type: ignore[call-overload]


def run_steps(steps: Sequence[Step], sample: Sample) -> np.ndarray:
    """The label map (H, W) uint8 of one sample after every step, in order."""
    for step in steps:
        sample = step(sample)
    return sample.label_map()
