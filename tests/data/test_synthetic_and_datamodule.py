"""The synthetic set, the transforms and the datamodule's batch arithmetic."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image

from clustercam_pl.data.datamodule import WSSSDataModule, pad_collate
from clustercam_pl.data.labels import mask_classes
from clustercam_pl.data.synthetic import (
    CLASS_COLOURS,
    MAX_CLASSES,
    SyntheticConfig,
    SyntheticWSSS,
    difficulty_knobs,
    make_sample,
    save_preview,
)
from clustercam_pl.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    apply_transform,
    build_eval_transform,
    build_train_transform,
    seed_transform,
)

pytestmark = pytest.mark.filterwarnings("error::UserWarning")

SMALL = {"num_train": 24, "num_val": 6, "num_test": 4}


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic() -> None:
    a, b = SyntheticWSSS("val", SMALL, seed=3), SyntheticWSSS("val", SMALL, seed=3)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
        assert torch.equal(x["cls_label"], y["cls_label"]) and x["image_id"] == y["image_id"]
    other = SyntheticWSSS("val", SMALL, seed=4)[0]
    assert not torch.equal(other["image"], a[0]["image"])
    train0 = SyntheticWSSS("train", SMALL, seed=3)[0]
    assert not torch.equal(train0["image"], a[0]["image"])  # splits are different images
    assert "mask" not in train0  # training items carry no pixel label


@pytest.mark.parametrize("k", [1, 4, MAX_CLASSES])
def test_synthetic_labels_match_masks(k: int) -> None:
    cfg = SyntheticConfig(num_classes=k, image_size=64 if k < 8 else 96, num_val=40)
    ds = SyntheticWSSS("val", cfg, seed=0)
    counts = np.zeros(k)
    n_objects = []
    for i in range(len(ds)):
        item = ds[i]
        img, mask, label = item["image"], item["mask"], item["cls_label"]
        s = cfg.image_size
        assert img.shape == (3, s, s) and img.dtype == torch.float32
        assert mask.shape == (s, s) and mask.dtype == torch.int64 and label.shape == (k,)
        assert int(mask.max()) <= k and int(mask.min()) >= 0
        in_mask = sorted(int(v) - 1 for v in mask.unique() if v > 0)
        assert torch.nonzero(label).flatten().tolist() == in_mask and in_mask  # >= 1 object per image
        counts += label.numpy()
        n_objects.append(len(in_mask))
    assert (counts > 0).all()  # every class occurs
    if k >= 4:
        assert max(n_objects) >= 2  # several classes per image occur


def test_synthetic_difficulty_changes_images_and_knobs_are_documented() -> None:
    knobs = difficulty_knobs()
    fields = {f.name for f in dataclasses.fields(SyntheticConfig)}
    assert set(knobs) <= fields and {"scale_range", "max_objects", "clutter", "color_jitter", "noise"} <= set(
        knobs
    )
    assert all(knobs[k]["default"] == getattr(SyntheticConfig(), k) for k in knobs)
    easy = SyntheticConfig(clutter=0.0, noise=0.0, color_jitter=0.0, max_objects=1)
    hard = SyntheticConfig(clutter=1.0, noise=0.2, color_jitter=0.5, max_objects=3)
    e = [make_sample(easy, 0, "val", i) for i in range(20)]
    h = [make_sample(hard, 0, "val", i) for i in range(20)]
    assert all(len(mask_classes(m, 4)) == 1 for _, m in e)

    def bg_std(samples):  # pixel variation of the background: clutter + noise raise it
        return np.mean([img[m == 0].astype(float).std() for img, m in samples])

    assert bg_std(h) > bg_std(e) + 10


def test_synthetic_colour_does_not_give_the_class() -> None:
    """Mean object colour per class is about the same: classes differ in shape/texture, not colour."""
    cfg = SyntheticConfig(num_val=150)
    means = [[] for _ in range(cfg.num_classes)]
    for i in range(cfg.num_val):
        img, m = make_sample(cfg, 0, "val", i)
        for c in mask_classes(m, cfg.num_classes):
            means[c].append(img[m == c + 1].mean(0))
    centres = np.array([np.mean(v, 0) for v in means])  # (K, 3)
    spread = np.mean([np.std(v, 0).mean() for v in means])
    assert np.abs(centres - centres.mean(0)).max() < 0.25 * spread


def test_synthetic_class_colours_name_the_class_and_change_nothing_else() -> None:
    """With ``class_colours`` each class's pixels are its own two colours; layout and masks are unchanged."""
    base = SyntheticConfig(num_val=40, color_jitter=0.0, noise=0.0)
    coloured = dataclasses.replace(base, class_colours=True)
    for i in range(base.num_val):
        img_b, m_b = make_sample(base, 0, "val", i)
        img_c, m_c = make_sample(coloured, 0, "val", i)
        np.testing.assert_array_equal(m_b, m_c)
        np.testing.assert_array_equal(img_b[m_b == 0], img_c[m_c == 0])  # background and distractors
        for c in mask_classes(m_c, base.num_classes):
            pix = img_c[m_c == c + 1].astype(float) / 255.0  # (P, 3)
            # Every pixel is one of the class's two colours, each moved by at most the 0.08 jitter.
            dist = np.abs(pix[:, None, :] - CLASS_COLOURS[c][None]).max(-1).min(-1)  # (P,)
            assert dist.max() <= 0.08 + 1e-2, (i, c)


def test_synthetic_config_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown synthetic option\(s\) \['num_clases'\]"):
        SyntheticConfig.from_dict({"num_clases": 3})
    with pytest.raises(ValueError, match="num_classes=9"):
        SyntheticConfig(num_classes=9)
    with pytest.raises(ValueError, match="scale_range"):
        SyntheticConfig(scale_range=(0.6, 0.3))


def test_save_preview(tmp_path: Path) -> None:
    path = tmp_path / "preview.png"
    save_preview(path, n=3, config={"num_classes": 3}, seed=1)
    with Image.open(path) as im:
        assert im.size[0] > im.size[1] > 100


# ---------------------------------------------------------------- transforms


def _image_and_mask(h: int = 60, w: int = 80) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    mask = np.zeros((h, w), np.uint8)
    mask[10:40, 20:60] = 3
    mask[0, :] = 255
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mask


@pytest.mark.parametrize("name", ["reference", "plain", "flip", "none"])
def test_train_transforms(name: str) -> None:
    img, mask = _image_and_mask(48, 48) if name == "none" else _image_and_mask()
    t = build_train_transform(name, crop_size=48, seed=0)
    for _ in range(10):
        x, m = apply_transform(t, img, mask)
        assert x.shape == (3, 48, 48) and x.dtype == torch.float32
        assert m.shape == (48, 48) and m.dtype == torch.int64
        assert set(m.unique().tolist()) <= {0, 3, 255}  # nearest-neighbour masks, 255 fill
    x1, _ = apply_transform(build_train_transform(name, 48, seed=5), img, mask)
    x2, _ = apply_transform(build_train_transform(name, 48, seed=5), img, mask)
    assert torch.equal(x1, x2)


def test_flip_keeps_the_whole_patch() -> None:
    img, mask = _image_and_mask(48, 48)
    t = build_train_transform("flip", crop_size=48, seed=0)
    flips = {(fy, fx): apply_transform(build_eval_transform(), img[::fy, ::fx].copy(), mask[::fy, ::fx].copy())
             for fy in (1, -1) for fx in (1, -1)}  # the four flips of the whole image
    seen = set()
    for _ in range(16):
        x, m = apply_transform(t, img, mask)
        which = [k for k, (fx_, fm) in flips.items() if torch.equal(m, fm) and torch.allclose(x, fx_)]
        assert len(which) == 1  # a flip of the whole patch: nothing cropped, scaled or erased
        seen.add(which[0])
    assert len(seen) == 4  # the flips are drawn independently (not one seed for both)


def test_plain_pads_image_with_zero_and_mask_with_ignore() -> None:
    img, mask = _image_and_mask(10, 10)
    mask[:] = 3
    x, m = apply_transform(build_train_transform("plain", crop_size=64, seed=0), img, mask)  # scale <= 2
    assert (m == 255).any() and (m == 3).any()
    pad = (m == 255).expand(3, -1, -1)
    expect = (-torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)).view(3, 1, 1).expand(3, 64, 64)
    torch.testing.assert_close(x[pad], expect[pad])


def test_eval_transform_and_reseeding() -> None:
    img, mask = _image_and_mask()
    x, m = apply_transform(build_eval_transform(), img, mask)
    torch.testing.assert_close(
        x[:, 5, 7],
        (torch.tensor(img[5, 7] / 255.0) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD),
        check_dtype=False,
        atol=1e-5,
        rtol=0,
    )
    assert torch.equal(m, torch.from_numpy(mask).long())
    t = build_train_transform("reference", 32, seed=0)
    a = apply_transform(t, img)[0]
    seed_transform(t, 0)
    assert torch.equal(apply_transform(t, img)[0], a)
    seed_transform(t, 1)
    assert not torch.equal(apply_transform(t, img)[0], a)


def test_the_operations_of_a_seeded_pipeline_decide_independently():
    """Two flips of p=0.5 in one seeded pipeline give all four outcomes (albumentations' own seeding gives
    every operation the same stream: both flips or neither, every time)."""
    img = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    outcomes = {"none": img, "h": img[:, ::-1], "v": img[::-1], "hv": img[::-1, ::-1]}
    t = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)])
    seen = set()
    for seed in (0, 1):
        seed_transform(t, seed)
        for _ in range(40):
            out = t(image=img)["image"]
            seen |= {k for k, v in outcomes.items() if np.array_equal(out, v)}
    assert seen == set(outcomes)
    # The training recipes are seeded the same way: the same seed, the same augmentation.
    first = [apply_transform(build_train_transform("plain", 4, seed=3), img)[0] for _ in range(2)]
    assert torch.equal(first[0], first[1])


# ---------------------------------------------------------------- datamodule


def _attach(dm: WSSSDataModule, world_size: int) -> None:
    dm.trainer = SimpleNamespace(world_size=world_size, global_rank=0)


def test_global_batch_is_split_over_devices() -> None:
    dm = WSSSDataModule(dataset="synthetic", global_batch_size=6, synthetic=SMALL)
    _attach(dm, 4)
    with pytest.raises(ValueError, match=r"global_batch_size=6 is not divisible by the world size 4"):
        dm.setup("fit")
    dm = WSSSDataModule(dataset="synthetic", global_batch_size=12, synthetic=SMALL, train_transform="none")
    _attach(dm, 4)
    dm.setup("fit")
    assert dm.batch_size == 3
    assert next(iter(dm.train_dataloader()))["image"].shape == (3, 3, 64, 64)
    alone = WSSSDataModule(dataset="synthetic", global_batch_size=12, synthetic=SMALL)
    alone.setup("fit")  # no trainer: world size 1
    assert alone.world_size == 1 and alone.batch_size == 12
    too_big = WSSSDataModule(dataset="synthetic", global_batch_size=32, synthetic=SMALL)
    with pytest.raises(ValueError, match="fewer than one batch of 32"):
        too_big.setup("fit")


def test_synthetic_datamodule_loaders() -> None:
    dm = WSSSDataModule(dataset="synthetic", global_batch_size=4, val_batch_size=3, synthetic=SMALL, seed=1)
    assert dm.num_classes == 4 and dm.crop_size == 64 and len(dm.class_names) == 4
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 6
    b = batches[0]
    assert set(b) == {"image", "cls_label", "image_id"}
    assert b["image"].shape == (4, 3, 64, 64) and b["cls_label"].shape == (4, 4) and len(b["image_id"]) == 4
    v = next(iter(dm.val_dataloader()))
    assert v["mask"].shape == (3, 64, 64) and v["mask"].dtype == torch.int64
    assert v["image_size"].tolist() == [[64, 64]] * 3
    dm.setup("test")
    assert len(dm.test_dataset) == SMALL["num_val"]  # test_split defaults to the val split
    with pytest.raises(ValueError, match="train_transform"):
        WSSSDataModule(train_transform="randaug")
    with pytest.raises(ValueError, match="dataset must be one of"):
        WSSSDataModule(dataset="imagenet")


def test_pad_collate_without_masks() -> None:
    items = [
        {"image": torch.ones(3, 4, 5), "cls_label": torch.zeros(2), "image_id": "a"},
        {"image": torch.ones(3, 6, 3), "cls_label": torch.ones(2), "image_id": "b"},
    ]
    out = pad_collate(items)
    assert out["image"].shape == (2, 3, 6, 5) and "mask" not in out and out["image_id"] == ["a", "b"]
    assert out["image"][0, :, 4:].abs().sum() == 0 and out["image"][1, :, :, 3:].abs().sum() == 0


class _SameImage(torch.utils.data.Dataset):
    """Eight copies of one image: any difference between outputs comes from the augmentation."""

    def __init__(self) -> None:
        self.transform = build_train_transform("reference", crop_size=32, seed=0)
        self.image = _image_and_mask()[0]

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        return apply_transform(self.transform, self.image)[0]


def test_workers_draw_different_augmentations() -> None:
    """albumentations keeps its own RNG; without reseeding every forked worker would repeat worker 0."""
    from clustercam_pl.data.datamodule import seed_worker

    def run(seed: int) -> list[torch.Tensor]:
        loader = torch.utils.data.DataLoader(
            _SameImage(),
            batch_size=1,
            num_workers=2,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(seed),
        )
        return [b[0] for b in loader]

    out = run(0)
    # Batches alternate between the two workers: batch 0 comes from worker 0, batch 1 from worker 1.
    assert not torch.equal(out[0], out[1])
    assert all(torch.equal(a, b) for a, b in zip(out, run(0), strict=True))  # reproducible


@pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's hints about few workers etc.
def test_datamodule_under_a_trainer() -> None:
    import lightning as L

    class Probe(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.head = torch.nn.Linear(3, 4)
            self.seen: list[tuple[int, ...]] = []

        def training_step(self, batch, _):
            self.seen.append(tuple(batch["image"].shape))
            logits = self.head(batch["image"].mean((2, 3)))  # (B, K)
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["cls_label"])

        def validation_step(self, batch, _):
            self.seen.append(tuple(batch["mask"].shape))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = WSSSDataModule(dataset="synthetic", global_batch_size=4, synthetic=SMALL)
    model = Probe()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        fast_dev_run=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, datamodule=dm)
    assert dm.batch_size == 4
    assert model.seen == [(4, 3, 64, 64), (4, 3, 64, 64), (1, 64, 64), (1, 64, 64)]
