"""``sam2``: label refinement with SAM 2 / SAM 2.1 image models (the ``sam2`` package, ``sam2`` extra).

Settings and modes: ``_segment_anything.SegmentAnythingStep``. ``config`` names one of the package's
model configs (``sam2.1_hiera_t``, ``sam2.1_hiera_s``, ``sam2.1_hiera_b+``, ``sam2.1_hiera_l``, or the
``sam2_hiera_*`` of SAM 2.0) or is a path to such a YAML file; ``checkpoint`` the matching official
file. The model is built from the YAML's ``_target_`` tree here rather than by ``sam2.build_sam``,
which composes the file through Hydra's global state (taken by the command running this step).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import yaml

from clustercam_pl.inference.steps._segment_anything import SegmentAnythingStep
from clustercam_pl.utils.imports import optional_import

# What sam2.build_sam.build_sam2 adds to every config for image prediction (apply_postprocessing).
_POSTPROCESSING = {
    "dynamic_multimask_via_stability": True,
    "dynamic_multimask_stability_delta": 0.05,
    "dynamic_multimask_stability_thresh": 0.98,
}


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader reading ``1e-6`` as a float, as YAML 1.2 and OmegaConf do (YAML 1.1: a string)."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.?[0-9_]*(?:[eE][-+]?[0-9]+)|\.[0-9_]+(?:[eE][-+]?[0-9]+)?)$"),
    list("-+0123456789."),
)


def _package() -> Any:
    return optional_import("sam2", "postprocess step sam2", "sam2", "sam2",
                           command="SAM2_BUILD_CUDA=0 pip install --no-build-isolation 'clustercam_pl[sam2]'")


def config_path(config: str) -> Path:
    """The YAML file of ``config``: a file path, or a model config shipped with the sam2 package."""
    if config.endswith((".yaml", ".yml")) and Path(config).is_file():
        return Path(config)
    root = Path(_package().__file__).parent / "configs"
    name = Path(config).name if config.endswith((".yaml", ".yml")) else f"{Path(config).name}.yaml"
    found = sorted(root.rglob(name))  # (sam2.1_hiera_t: Path.stem would cut at ".1")
    if not found:
        names = sorted(p.stem for p in root.rglob("*.yaml") if "training" not in p.parent.name)
        raise ValueError(f"sam2: config={config!r} is neither a YAML file nor one of {names}")
    return found[0]


def instantiate(node: Any) -> Any:
    """Objects of a ``_target_`` tree (Hydra's convention, recursive; no interpolation)."""
    if isinstance(node, list):
        return [instantiate(v) for v in node]
    if not isinstance(node, dict):
        return node
    kwargs = {k: instantiate(v) for k, v in node.items() if k != "_target_"}
    if "_target_" not in node:
        return kwargs
    module, _, attr = node["_target_"].rpartition(".")
    return getattr(importlib.import_module(module), attr)(**kwargs)


def build_sam2(config: str, checkpoint: str | None, device: Any) -> torch.nn.Module:
    """A SAM 2 image model of ``config`` with the weights of ``checkpoint`` (None: random, for tests)."""
    _package()
    path = config_path(config)
    spec = yaml.load(path.read_text(), Loader=_Yaml12Loader)["model"]  # noqa: S506 (a safe loader)
    spec.setdefault("sam_mask_decoder_extra_args", {}).update(_POSTPROCESSING)
    model = instantiate(spec)
    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        state = state.get("model", state) if isinstance(state, dict) else state
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"sam2: {checkpoint} does not fit config={path.name} (missing {missing[:3]}..., "
                             f"unexpected {unexpected[:3]}...); pass the config of that file "
                             "(sam2.1_hiera_tiny.pt: sam2.1_hiera_t, ...)")
    return model.to(device).eval()


def _fit_feature_sizes(predictor: Any, model: Any) -> Any:
    """The predictor assumes a 1024 px model ((256, 256), (128, 128), (64, 64) features); derive them
    from the model's image size instead (the same values at 1024, right for smaller test models)."""
    s = int(model.image_size)
    predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    return predictor


@dataclass(frozen=True)
class Sam2Step(SegmentAnythingStep):
    name: ClassVar[str] = "sam2"
    model_fields: ClassVar[tuple[str, ...]] = ("checkpoint", "device", "config")
    config: str = "sam2.1_hiera_t"

    def build_model(self, device: Any) -> Any:
        return build_sam2(self.config, self.checkpoint, device)

    def predictor(self, model: Any) -> Any:
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        return _fit_feature_sizes(SAM2ImagePredictor(model), model)

    def generator(self, model: Any) -> Any:
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

        gen = SAM2AutomaticMaskGenerator(model, points_per_side=self.points_per_side,
                                         pred_iou_thresh=self.pred_iou_thresh,
                                         stability_score_thresh=self.stability_score_thresh)
        _fit_feature_sizes(gen.predictor, model)
        return gen


STEP = Sam2Step
