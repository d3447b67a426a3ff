"""`NetConfig`: every shape of the ClusterCAM network in one frozen, validated object.

The network, `conf/net/*.yaml`, the benchmark, the tests, reference checkpoints (shapes read off the
tensors) and framework checkpoints (stored as a dict) all describe a network with this one class.
The named presets are the files of `conf/net/` (one home for Hydra and for Python callers):
`NetConfig.preset("tiny", num_classes=3)` reads `conf/net/tiny.yaml` without Hydra.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from clustercam_pl.data.labels import num_labels

PRESET_DIR = Path(__file__).resolve().parents[1] / "conf" / "net"

# Network arguments of earlier versions that are CAM settings now (`CAMConfig`): refused with a hint.
MOVED_TO_CAM = ("cam_layers", "p2p_refine")


@dataclass(frozen=True)
class NetConfig:
    """The ClusterCAM network's shape (reference DeiT-S values as defaults).

    Attributes:
        num_classes: K classes: K class tokens; the decoder predicts `num_labels` label values.
        background: the data has a background class (label value 0, class c = c + 1; VOC, COCO): the
            decoder predicts K + 1 values and pseudo labels are made against a background score.
            False (histopathology, remote sensing): K values, class c = c, every pixel is a class.
            Set by the training entry from the dataset kind, never by hand; checkpoints without the
            field (every file before it existed) load as True.
        embed_dim, depth, num_heads, mlp_ratio, patch_size: the ViT (DeiT-S: 384, 12, 6, 4, 16).
        pos_grid: side of the square position-embedding grid of pre-training (14 for 224 pixels);
            other input sizes resample it on every forward, as the reference does.
        cluster_blocks: indices of the blocks with the cluster module; None = every block, () = none
            (the MCTformer-style baseline).
        cluster_grid: (gh, gw) patches averaged into one initial cluster token.
        cluster_iters: clustering iterations (reference code 3; the paper text says 10).
        alpha_init: initial cluster weight of every block; None draws U[0, 1) per block (reference).
        drop_path_rate: stochastic depth, linear from 0 over the blocks (reference 0.1).
        qkv_bias: bias of the query/key/value projections (DeiT: yes).
        layer_scale: LayerScale init value (DINOv2: 1e-5; the pretrained gammas overwrite it) or None for
            none (DeiT / ViT / DINO, the reference network). With it every block scales each residual
            branch by a learned per-channel gamma (`ls1`, `ls2`, and `ls_cluster` for the cluster branch).
        weights: the timm weights this preset was published with. The network never loads them itself;
            experiments that start from pretrained weights read them as `model.pretrained: ${net.weights}`,
            so `net=<preset>` brings its own weights and `model.pretrained=<name or file>` overrides them.
        fused_attention: fused SDPA for attention outputs with only the K class rows explicit (fast);
            False materialises every attention matrix as the reference does. Same numbers.
        decoder_width, decoder_dilation: the LargeFOV decoder (512, 5).
        in_chans: input channels of the patch embedding (3: RGB; 4: RGB-IR aerial tiles; 13: Sentinel-2).
            Set from the dataset (``data.in_channels``) by training; ImageNet weights are adapted to it
            (``checkpoint.imagenet.adapt_input_conv``). Checkpoints written before it existed load as 3.
        mean, std: the per-channel normalisation the network was trained with (``in_chans`` values each),
            stored with the network so that prediction normalises a new image the same way; None:
            ImageNet's (``data.transforms.IMAGENET_MEAN`` / ``IMAGENET_STD``, every RGB dataset).
    """

    num_classes: int = 20
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    patch_size: int = 16
    pos_grid: int = 14
    cluster_blocks: tuple[int, ...] | None = None
    cluster_grid: tuple[int, int] = (2, 2)
    cluster_iters: int = 3
    alpha_init: float | None = None
    drop_path_rate: float = 0.1
    qkv_bias: bool = True
    layer_scale: float | None = None
    weights: str | None = None
    fused_attention: bool = True
    decoder_width: int = 512
    decoder_dilation: int = 5
    in_chans: int = 3
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    background: bool = True

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen: normalise once)
        if self.cluster_blocks is not None:
            set_("cluster_blocks", tuple(sorted({int(i) for i in self.cluster_blocks})))
        set_("cluster_grid", tuple(int(g) for g in self.cluster_grid))
        for key in ("mean", "std"):
            if getattr(self, key) is not None:
                set_(key, tuple(float(v) for v in getattr(self, key)))
        positive = ("in_chans", "num_classes", "embed_dim", "depth", "num_heads", "patch_size", "pos_grid",
                    "cluster_iters", "decoder_width", "decoder_dilation")
        for key in positive:
            if int(getattr(self, key)) < 1:
                raise ValueError(f"net.{key} must be a positive integer, got {getattr(self, key)}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"net.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"net.embed_dim={self.embed_dim} is not divisible by net.num_heads={self.num_heads}")
        if len(self.cluster_grid) != 2 or min(self.cluster_grid) < 1:
            raise ValueError(f"net.cluster_grid must be two positive integers, got {list(self.cluster_grid)}")
        if bad := [i for i in (self.cluster_blocks or ()) if not 0 <= i < self.depth]:
            raise ValueError(f"net.cluster_blocks {bad} outside 0..{self.depth - 1} (net.depth={self.depth})")
        if not 0 <= self.drop_path_rate < 1:
            raise ValueError(f"net.drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.layer_scale is not None and not self.layer_scale > 0:
            raise ValueError(f"net.layer_scale must be > 0 or null (no LayerScale), got {self.layer_scale}")
        if self.alpha_init is not None and not 0 <= self.alpha_init <= 1:
            raise ValueError(f"net.alpha_init must be in [0, 1] or null (random), got {self.alpha_init}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("net.mean and net.std are given together (or both null: ImageNet's)")
        if self.mean is None and self.in_chans != 3:
            raise ValueError(f"net.in_chans={self.in_chans} needs net.mean and net.std ({self.in_chans} values "
                             "each; training takes them from the dataset): ImageNet's are for 3 channels")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is not None and len(values) != self.in_chans:
                raise ValueError(f"net.{key} has {len(values)} values, net.in_chans={self.in_chans}: one per channel")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"net.std must be positive, got {list(self.std)}")

    # ------------------------------------------------------------------------------ derived
    @property
    def cluster_block_set(self) -> frozenset[int]:
        return frozenset(range(self.depth) if self.cluster_blocks is None else self.cluster_blocks)

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) of the network's input channels: the stored ones, else ImageNet's."""
        from clustercam_pl.data.transforms import IMAGENET_MEAN, IMAGENET_STD

        if self.mean is None or self.std is None:
            return IMAGENET_MEAN, IMAGENET_STD
        return self.mean, self.std

    @property
    def num_labels(self) -> int:
        """Label values the decoder predicts: K + 1 with a background class, K without."""
        return num_labels(self.num_classes, self.background)

    @property
    def feature_channels(self) -> int:
        """Width of F' = [patch features; every block's class-to-patch attention per head and class]."""
        return self.embed_dim + self.depth * self.num_heads * self.num_classes

    # ---------------------------------------------------------------------------- to / from
    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, not tuples), so checkpoints load with `weights_only=True`."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "network config") -> NetConfig:
        """Build from a stored dict; unknown keys are an error that names them."""
        fields = {f.name for f in dataclasses.fields(cls)}
        if moved := [k for k in values if k in MOVED_TO_CAM]:
            raise ValueError(
                f"{source}: {moved} are CAM settings now: pass them to CAMConfig (config key cam.{moved[0]})"
            )
        if unknown := sorted(set(values) - fields):
            raise ValueError(f"{source}: unknown network setting(s) {unknown}; known: {sorted(fields)}")
        return cls(**values)

    def replace(self, **changes: Any) -> NetConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> NetConfig:
        """A named preset (`conf/net/<name>.yaml`) with `overrides` applied."""
        return cls.from_dict(preset_values(name) | overrides, source=f"net preset {name!r}")


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_values(name: str) -> dict[str, Any]:
    """The values of `conf/net/<name>.yaml`, following its `defaults` list (no Hydra needed)."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown network preset {name!r}; known: {preset_names()} (files in {PRESET_DIR})")
    raw = yaml.safe_load(path.read_text()) or {}
    values: dict[str, Any] = {}
    for parent in raw.pop("defaults", []):
        if parent != "_self_":
            values |= preset_values(str(parent))
    raw.pop("_target_", None)
    return values | raw


def as_config(config: NetConfig | Mapping[str, Any] | None, fields: Mapping[str, Any]) -> NetConfig:
    """`config` (a NetConfig, a dict or None for the defaults) with `fields` applied."""
    if config is None:
        config = NetConfig()
    elif isinstance(config, Mapping):
        config = NetConfig.from_dict(config)
    elif not isinstance(config, NetConfig):
        raise TypeError(f"expected a NetConfig, got {type(config).__name__}")
    return NetConfig.from_dict(config.to_dict() | dict(fields)) if fields else config

