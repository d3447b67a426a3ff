"""``WSSSDataModule``: VOC, COCO, a folder dataset or the synthetic set behind one LightningDataModule.

Batches are dicts. Training: ``image`` float32 (B, N, S, S) (N = 3 but for N-band data), ``cls_label``
float32 (B, K), ``image_id`` list[str] (fixed crop size S, no mask). Evaluation: images keep their own size; a batch
of ``val_batch_size`` images is padded to its largest height and width (image with 0, i.e. the mean
colour after normalisation, mask with 255 = ignore), and ``image_size`` int64 (B, 2) holds each
image's original (H, W) so predictions can be cropped back. With ``val_batch_size=1`` (the default)
nothing is padded.

``global_batch_size`` is the batch over all devices and nodes; the per-device batch is derived in
:meth:`setup` from the trainer's world size, and a global batch that does not divide is an error
(training with a silently different effective batch is the failure this prevents).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, default_collate, get_worker_info

from clustercam_pl.data.fixed_labels import FixedLabelDataset
from clustercam_pl.data.labels import IGNORE_INDEX
from clustercam_pl.data.layout import prepare_hint
from clustercam_pl.data.registry import DEFAULT_CROP, LoadOptions, dataset_kind
from clustercam_pl.data.transforms import (
    TRAIN_TRANSFORMS,
    build_eval_transform,
    build_train_transform,
    seed_transform,
)
from clustercam_pl.utils.checks import check_range

DATA_ENV = "CLUSTERCAM_DATA"
"""Environment variable: folder holding prepared ``voc``/``coco`` roots, used when data_root is None."""

__all__ = ["DEFAULT_CROP", "WSSSDataModule", "pad_collate"]  # DEFAULT_CROP: its home is data.registry


def pad_collate(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Collate evaluation items of different sizes: pad images with 0 and masks with 255 (bottom/right).

    Returns ``image`` (B, N, Hmax, Wmax), ``cls_label`` (B, K), ``mask`` (B, Hmax, Wmax) if the items
    have masks, ``image_id`` list[str], ``image_size`` int64 (B, 2) original (H, W).
    """
    sizes = torch.tensor([tuple(item["image"].shape[-2:]) for item in batch], dtype=torch.long)  # (B, 2)
    h, w = (int(v) for v in sizes.max(dim=0).values)
    c = batch[0]["image"].shape[0]
    images = torch.zeros(len(batch), c, h, w, dtype=batch[0]["image"].dtype)  # (B, N, Hmax, Wmax)
    for i, item in enumerate(batch):
        images[i, :, : sizes[i, 0], : sizes[i, 1]] = item["image"]
    out: dict[str, Any] = {
        "image": images,
        "cls_label": torch.stack([item["cls_label"] for item in batch]),  # (B, K)
        "image_id": [item["image_id"] for item in batch],
        "image_size": sizes,
    }
    if "mask" in batch[0]:
        masks = torch.full((len(batch), h, w), IGNORE_INDEX, dtype=torch.long)  # (B, Hmax, Wmax)
        for i, item in enumerate(batch):
            masks[i, : sizes[i, 0], : sizes[i, 1]] = item["mask"]
        out["mask"] = masks
    return out


class EpochShuffleSampler(Sampler[int]):
    """A random permutation drawn from (seed, epoch); Lightning calls `set_epoch` before each epoch."""

    def __init__(self, length: int, seed: int = 0) -> None:
        self.length, self.seed, self.epoch = int(length), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=g).tolist())


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: distinct, reproducible seeds per worker for numpy, random and
    the dataset's albumentations pipeline (which keeps its own generator)."""
    info = get_worker_info()
    seed = info.seed if info is not None else torch.initial_seed()
    np.random.seed(seed % 2**32)  # noqa: NPY002  (legacy global RNG used by third-party code)
    random.seed(seed)
    if info is not None:
        seed_transform(getattr(info.dataset, "transform", None), seed)


class WSSSDataModule(L.LightningDataModule):
    """Datasets and loaders for weakly supervised segmentation.

    Args:
        dataset: a registered dataset kind (:mod:`clustercam_pl.data.registry`): "voc", "coco",
            "folder" (your own data, ``python -m clustercam_pl.prepare folder``; K and the class names
            come from its prepared root) or "synthetic".
        data_root: the prepared root (``--out`` of ``python -m clustercam_pl.prepare``). None: the
            environment variable ``CLUSTERCAM_DATA`` joined with the dataset name. Unused for synthetic.
        train_split, val_split: split names; None: the kind's ``default_splits`` (VOC train_aug/val,
            the others train/val).
        test_split: split for ``trainer.test``/``predict`` (VOC "test" has no masks); None: the val split.
        global_batch_size: training batch summed over all devices and nodes.
        val_batch_size: evaluation batch per device (1: no padding).
        num_workers: DataLoader workers per device.
        crop_size: training crop side. None: the kind's ``default_crop`` (448; synthetic: the image size).
        train_transform: "reference" (the reference recipe), "plain", "flip" or "none" (see data.transforms);
            data with other than 3 channels takes "plain", "flip" or "none" (refused with a hint otherwise).
        label_source: VOC "xml" | "mask", COCO "annotations" | "mask", or a path to a label file;
            None: the source chosen at preparation. Ignored for synthetic (labels come from the masks).
        skip_unlabeled: drop training images without any class (logged) instead of raising.
        use_negatives: train on negative images (no class present: all-zero target, all-background
            pseudo label). False: leave them out of training (logged); evaluation always scores every
            image. None: the kind's ``default_negatives``: kept for "folder"; for VOC/COCO an empty
            training label is an error (see ``skip_unlabeled``). Data without a background class
            (``has_background``) cannot keep them: None means an error there, True is refused.
        seed: seed of the synthetic images and of the augmentation when ``num_workers=0``.
        synthetic: options of :class:`~clustercam_pl.data.synthetic.SyntheticConfig` (num_classes,
            image_size, num_train, num_val, num_test and the difficulty knobs).
        pin_memory: passed to the DataLoaders.
        check_files: check in ``setup`` that every listed image/mask exists (main process, clear error).
        label_dir: stage two: a folder of ``<image_id>.png`` label maps of the training split (0 background,
            c + 1 class c, 255 ignore; without a background class c = class c; what ``export_labels`` /
            ``refine`` write). Training items then carry
            ``mask`` = that label, cropped and augmented with the image; checked in ``setup`` (see
            :mod:`clustercam_pl.data.fixed_labels`). None: stage one (image-level labels only).
    """

    group: ClassVar[str] = "data"  # the config group it is built from: messages name `data.<argument>`

    def __init__(
        self,
        dataset: str = "synthetic",
        data_root: str | None = None,
        train_split: str | None = None,
        val_split: str | None = None,
        test_split: str | None = None,
        global_batch_size: int = 16,
        val_batch_size: int = 1,
        num_workers: int = 0,
        crop_size: int | None = None,
        train_transform: str = "reference",
        label_source: str | None = None,
        skip_unlabeled: bool = False,
        use_negatives: bool | None = None,
        seed: int = 0,
        synthetic: Mapping[str, Any] | None = None,
        pin_memory: bool = False,
        check_files: bool = True,
        label_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.kind = dataset_kind(dataset)
        if train_transform not in TRAIN_TRANSFORMS:
            raise ValueError(f"data.train_transform must be one of {TRAIN_TRANSFORMS}, got {train_transform!r}")
        g = self.group
        check_range(f"{g}.global_batch_size", global_batch_size, ge=1, integer=True)
        check_range(f"{g}.val_batch_size", val_batch_size, ge=1, integer=True)
        check_range(f"{g}.num_workers", num_workers, ge=0, integer=True)
        self.save_hyperparameters(logger=False)
        self.dataset = dataset
        self.data_root = data_root
        self.train_split = train_split or self.kind.default_splits[0]
        self.val_split = val_split or self.kind.default_splits[1]
        self.test_split = test_split or self.val_split
        self.global_batch_size = global_batch_size
        self.val_batch_size = val_batch_size
        self.num_workers = num_workers
        self.train_transform = train_transform
        self.label_source = label_source
        self.skip_unlabeled = skip_unlabeled
        self.use_negatives = use_negatives
        self._class_names: tuple[str, ...] | None = None
        self._channels: int | None = None
        self._normalization: list[tuple[tuple[float, ...], tuple[float, ...]] | None] = []  # [value] once read
        self._has_background: bool | None = None
        self.seed = seed
        self.pin_memory = pin_memory
        self.check_files = check_files
        self.label_dir = None if label_dir is None else os.fspath(label_dir)
        self.kind_config = self.kind.configure(synthetic)  # the synthetic kind's options; others take none
        if crop_size is None:
            crop_size = self.kind.default_crop(self.kind_config)
        check_range(f"{g}.crop_size", crop_size, ge=16, integer=True)
        self.crop_size = crop_size
        self.batch_size: int | None = None  # per device, set in setup()
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None

    # ------------------------------------------------------------------ properties
    @property
    def num_classes(self) -> int:
        """K: 20 (VOC), 80 (COCO), the folder dataset's (from its manifest) or the synthetic ``num_classes``."""
        return len(self.class_names)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The kind's classes, or those of the prepared root / the kind's options (read once)."""
        if self._class_names is None:
            self._class_names = self.kind.class_names_of(self.root, self.kind_config)
        return self._class_names

    @property
    def in_channels(self) -> int:
        """Channels of an input image: the kind's ``in_channels`` or the prepared root's (read once)."""
        if self._channels is None:
            self._channels = self.kind.channels_of(self.root, self.kind_config)
        return self._channels

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """Per-channel (mean, std) stored with the data (``prepare`` computes them over the training split);
        None: ImageNet's. Training stores them with the network (``net.mean`` / ``net.std``)."""
        if not self._normalization:
            stats = self.kind.normalization_of(self.root, self.kind_config)
            if stats is None and self.in_channels != 3:
                raise ValueError(f"the {self.dataset} root {self.root} has {self.in_channels} channels but no stored "
                                 f"mean / std; {prepare_hint(self.dataset)}")
            self._normalization.append(stats)
        return self._normalization[0]

    @property
    def has_background(self) -> bool:
        """Whether label value 0 is a background class: the kind's fact, or its prepared root's / options'
        (read once). The network's ``background`` is set from it (see :mod:`clustercam_pl.data.labels`)."""
        if self._has_background is None:
            self._has_background = self.kind.has_background_of(self.root, self.kind_config)
        return self._has_background

    @property
    def negatives(self) -> str:
        """What the training split does with negative images (see PreparedSegmentation): the kind's
        ``default_negatives`` unless ``use_negatives`` says; without a background class always "error"
        (an image without any class cannot be labelled) unless they are dropped."""
        if self.use_negatives is None:
            return self.kind.default_negatives if self.has_background else "error"
        if self.use_negatives and not self.has_background:
            raise ValueError(
                f"data.use_negatives=true, but data.dataset={self.dataset} has no background class, so an "
                "image without any class cannot be labelled: set data.use_negatives=false (leave them out) "
                "or data.use_negatives=null (an error naming them)"
            )
        return "keep" if self.use_negatives else "drop"

    @property
    def world_size(self) -> int:
        """Devices x nodes of the attached trainer; 1 without one."""
        trainer = getattr(self, "trainer", None)
        return int(trainer.world_size) if trainer is not None else 1

    @property
    def root(self) -> str | None:
        """The prepared root in use (data_root, else ``$CLUSTERCAM_DATA/<dataset>``)."""
        if self.data_root:
            return os.fspath(self.data_root)
        env = os.environ.get(DATA_ENV)
        return os.path.join(env, self.dataset) if env else None

    # ------------------------------------------------------------------ setup
    def per_device_batch_size(self, world_size: int) -> int:
        """``global_batch_size / world_size``; ValueError naming both when it does not divide."""
        if self.global_batch_size % world_size:
            raise ValueError(
                f"data.global_batch_size={self.global_batch_size} is not divisible by the world size {world_size} "
                f"(devices x nodes); choose a multiple of {world_size}"
            )
        return self.global_batch_size // world_size

    def _check_root(self) -> None:
        if self.kind.prepare_example is not None and self.root is None:
            raise FileNotFoundError(
                f"data.data_root is not set and ${DATA_ENV} is not defined for data.dataset={self.dataset}; "
                f"{prepare_hint(self.dataset)}"
            )

    def setup(self, stage: str | None = None) -> None:
        """Derive the per-device batch, check the data root and build the datasets of ``stage``."""
        self.batch_size = self.per_device_batch_size(self.world_size)
        self._check_root()
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self._make(self.train_split, train=True)
            per_rank = len(self.train_dataset) // self.world_size
            if per_rank < self.batch_size:
                raise ValueError(
                    f"training split {self.train_split!r} has {len(self.train_dataset)} images, "
                    f"fewer than one batch of {self.batch_size} per device on {self.world_size} device(s)"
                )
        if stage in (None, "fit", "validate") and self.val_dataset is None:
            self.val_dataset = self._make(self.val_split, train=False)
        if stage in (None, "test", "predict") and self.test_dataset is None:
            self.test_dataset = self._make(self.test_split, train=False)

    def _make(self, split: str, train: bool) -> Dataset:
        rank = int(getattr(getattr(self, "trainer", None), "global_rank", 0) or 0)
        mean, std = self.normalization or (None, None)
        if train:
            transform = build_train_transform(self.train_transform, self.crop_size, seed=self.seed + rank,
                                              mean=mean, std=std)
        else:
            transform = build_eval_transform(mean, std)
        opts = LoadOptions(self.root, self.label_source, self.skip_unlabeled, self.negatives,
                           self.check_files, self.seed, self.kind_config)
        if train and self.label_dir is not None:  # stage two: the fixed labels ride along with the crops
            source = self.kind.build(split, build_eval_transform(mean, std), train=True, opts=opts)
            return FixedLabelDataset(source, self.label_dir, transform, split=split, background=self.has_background)
        return self.kind.build(split, transform, train=train, opts=opts)

    # ------------------------------------------------------------------ loaders
    def _loader(self, dataset: Dataset | None, name: str, **kw: Any) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{name} dataset is not built: call setup() first (Lightning does it)")
        return DataLoader(
            dataset,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=seed_worker if self.num_workers > 0 else None,
            **kw,
        )

    def train_dataloader(self) -> DataLoader:
        assert self.batch_size is not None
        # One process: the order depends on (seed, epoch) only, so a run resumed at an epoch boundary
        # sees the same batches as an uninterrupted one. Under DDP Lightning substitutes its
        # DistributedSampler, which is seeded per epoch the same way.
        return self._loader(
            self.train_dataset,
            "train",
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(len(self.train_dataset), self.seed),
            drop_last=True,
            collate_fn=default_collate,
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, "val", batch_size=self.val_batch_size, collate_fn=pad_collate)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, "test", batch_size=self.val_batch_size, collate_fn=pad_collate)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    # ------------------------------------------------------------------ any split
    def eval_dataset(self, split: str) -> Dataset:
        """The evaluation dataset of any split (full images, masks where the split has them), built once."""
        cache = self.__dict__.setdefault("_eval_datasets", {})
        if split not in cache:
            self._check_root()
            cache[split] = self._make(split, train=False)
        return cache[split]

    def eval_loader(self, split: str, indices: Sequence[int] | None = None) -> DataLoader:
        """A padded-batch loader (``val_batch_size``) over a split, or over the items ``indices`` of it."""
        dataset = self.eval_dataset(split)
        if indices is not None:
            dataset = Subset(dataset, list(indices))
        return self._loader(dataset, split, batch_size=self.val_batch_size, collate_fn=pad_collate)
