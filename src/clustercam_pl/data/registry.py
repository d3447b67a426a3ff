"""One registry of dataset kinds: each kind's facts live on its dataset class, nowhere else.

A dataset class subclasses :class:`DatasetKind` (through ``PreparedSegmentation`` for a prepared root)
and states its facts as class attributes; defining a class with a ``name`` registers it. Adding a kind
therefore means: one module ``clustercam_pl/data/<name>.py`` with its class, one ``conf/data/<name>.yaml``
and, if its raw data needs preparing, one module ``clustercam_pl/data/prepare_<name>.py`` with
``HELP``, ``add_arguments(parser)`` and ``run(args, log)`` (found by ``python -m clustercam_pl.prepare``
by its name). Nothing else (the datamodule, the prepare command, the config checks) names a dataset.

``has_background`` says whether label value 0 is a background class (see
:mod:`clustercam_pl.data.labels` for the label-value convention); a kind whose roots differ (``folder``)
leaves it None and its prepared root's manifest says (:meth:`DatasetKind.has_background_of`). Facts not
used with other values yet (``void_values``) are stated already, so that a kind with another void value
in its masks declares it here instead of being special-cased later. ``in_channels`` (and the per-channel
mean / std) may also come from a prepared root's manifest (``channels_of`` / ``normalization_of``):
training sets the network's ``in_chans`` from it, as it sets K from the classes.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar

from clustercam_pl.data.labels import IGNORE_INDEX

DEFAULT_CROP = 448
"""Side of the square training crops when ``data.crop_size`` is null (VOC, COCO, folder)."""

_KINDS: dict[str, type[DatasetKind]] = {}


@dataclass(frozen=True)
class LoadOptions:
    """What the datamodule passes to :meth:`DatasetKind.build` besides the split (each kind uses its part)."""

    root: str | None
    label_source: str | None = None
    skip_unlabeled: bool = False
    negatives: str = "error"
    check_files: bool = True
    seed: int = 0
    config: Any = None  # the kind's own options parsed by `DatasetKind.configure` (synthetic: SyntheticConfig)


class DatasetKind:
    """The facts of one dataset kind, as class attributes; a subclass with a ``name`` is registered."""

    name: ClassVar[str] = ""
    """``data.dataset`` value, the manifest's ``dataset`` and the module name ``data/<name>.py``."""
    fixed_classes: ClassVar[tuple[str, ...] | None] = None
    """The class names in channel order; None: they come from the prepared root (or the kind's options)."""
    default_splits: ClassVar[tuple[str, str]] = ("train", "val")
    """(train, val) split names used when ``data.train_split`` / ``data.val_split`` are null."""
    default_negatives: ClassVar[str] = "error"
    """What training does with an image without any class when ``data.use_negatives`` is null."""
    has_background: ClassVar[bool | None] = True
    """Mask value 0 is a background class and class c is value c + 1 (VOC, COCO); False: class c is value
    c, every pixel is a class (histopathology); None: the prepared root's manifest says (a folder dataset).
    Ask :meth:`has_background_of`, which also knows the per-root and per-config answers."""
    void_values: ClassVar[tuple[int, ...]] = (IGNORE_INDEX,)
    """Mask values that are not scored."""
    in_channels: ClassVar[int] = 3
    """Channels of an input image (a prepared root's manifest may say otherwise: ``channels_of``)."""
    prepare_example: ClassVar[str | None] = None
    """A command that prepares a root of this kind (error messages); None: the kind needs no preparing."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if not name:
            return
        known = _KINDS.get(name)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise TypeError(f"dataset kind {name!r} is defined twice: {known.__module__}.{known.__qualname__} "
                            f"and {cls.__module__}.{cls.__qualname__}; give one of them another name")
        _KINDS[name] = cls

    # Hooks with the behaviour of a prepared root; a kind that is not one (synthetic) overrides them.
    @classmethod
    def configure(cls, options: Mapping[str, Any] | None) -> Any:
        """Parse the kind's own options (``data.<name>``); None for a kind without any."""
        return None

    @classmethod
    def default_crop(cls, config: Any) -> int:
        """The training crop side when ``data.crop_size`` is null."""
        return DEFAULT_CROP

    @classmethod
    def training_side(cls, data: Mapping[str, Any]) -> tuple[str, int | None]:
        """The ``data.*`` key that sets the side of the square training images and its value, from the
        (unparsed) data config; None: images keep their own sizes (``train_transform=none``)."""
        if data.get("train_transform") == "none":
            return "data.crop_size", None
        crop = data.get("crop_size")
        return "data.crop_size", DEFAULT_CROP if crop is None else int(crop)

    @classmethod
    def class_names_of(cls, root: str | None, config: Any) -> tuple[str, ...]:
        """The class names of a root of this kind: ``fixed_classes`` here; a kind whose classes depend on
        its data (a prepared root's manifest, a synthetic config) overrides this."""
        if cls.fixed_classes is None:
            raise NotImplementedError(f"dataset kind {cls.name!r} has no fixed classes and no class_names_of")
        return cls.fixed_classes

    @classmethod
    def channels_of(cls, root: str | None, config: Any) -> int:
        """The input channels of a root of this kind: ``in_channels`` here; a prepared root overrides."""
        return cls.in_channels

    @classmethod
    def normalization_of(cls, root: str | None, config: Any) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """(mean, std) per channel stored with the data; None: ImageNet's (every RGB kind without stats)."""
        return None

    @classmethod
    def has_background_of(cls, root: str | None, config: Any) -> bool:
        """Whether a root of this kind has a background class: ``has_background`` here; a kind whose answer
        depends on its data (a prepared root's manifest, a synthetic config) overrides this."""
        if cls.has_background is None:
            raise NotImplementedError(f"dataset kind {cls.name!r} has has_background=None and no has_background_of")
        return cls.has_background

    @classmethod
    def build(cls, split: str, transform: Callable[..., dict[str, Any]], *, train: bool, opts: LoadOptions) -> Any:
        """The dataset of ``split``: training (no masks, labels required) or evaluation."""
        return cls(  # type: ignore[call-arg]
            opts.root,
            split,
            transform,
            with_mask=False if train else None,
            label_source=opts.label_source,
            require_labels=train,
            skip_unlabeled=opts.skip_unlabeled,
            negatives=opts.negatives,
            check_files=opts.check_files,
        )


def _data_modules() -> list[str]:
    import clustercam_pl.data as data

    return sorted(m.name for m in pkgutil.iter_modules(data.__path__) if not m.name.startswith("_"))


def dataset_names() -> list[str]:
    """Every registered kind (the modules of ``clustercam_pl.data`` are imported to find them)."""
    for module in _data_modules():
        if not module.startswith("prepare_"):
            importlib.import_module(f"clustercam_pl.data.{module}")
    return sorted(_KINDS)


def dataset_kind(name: str) -> type[DatasetKind]:
    """The class of the kind ``name`` (imports ``clustercam_pl.data.<name>``); ValueError listing the kinds."""
    if name not in _KINDS and name in _data_modules():
        importlib.import_module(f"clustercam_pl.data.{name}")
    if name not in _KINDS:
        raise ValueError(f"data.dataset must be one of {dataset_names()}, got {name!r}")
    return _KINDS[name]


def prepare_steps() -> dict[str, ModuleType]:
    """``{name: module}`` of every ``clustercam_pl.data.prepare_<name>`` module that is a prepare step
    (defines ``add_arguments`` and ``run``); the modules import neither torch nor the dataset classes."""
    steps = {}
    for module in _data_modules():
        if module.startswith("prepare_"):
            mod = importlib.import_module(f"clustercam_pl.data.{module}")
            if hasattr(mod, "add_arguments") and hasattr(mod, "run"):
                steps[module.removeprefix("prepare_")] = mod
    return steps
