"""Trivial baselines of the synthetic val set (the numbers `make train` must beat).

Run: .venv/bin/python experiments/synthetic_baselines.py [data.synthetic overrides as key=value ...]
Uses the same data config as `+experiment=synthetic` (src/clustercam_pl/conf/data/synthetic.yaml).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml

from clustercam_pl.data.datamodule import WSSSDataModule
from clustercam_pl.metrics import SegmentationIoU

conf = yaml.safe_load((Path(__file__).parents[1] / "src/clustercam_pl/conf/data/synthetic.yaml").read_text())
syn = dict(conf["synthetic"])
for kv in sys.argv[1:]:
    k, v = kv.split("=", 1)
    syn[k] = yaml.safe_load(v)
dm = WSSSDataModule(dataset="synthetic", val_batch_size=1, synthetic=syn)
dm.setup("validate")
K = dm.num_classes
all_bg, label_fill, label_centre = (SegmentationIoU(K + 1) for _ in range(3))
for batch in dm.val_dataloader():
    mask, label = batch["mask"], batch["cls_label"]  # (1, H, W), (1, K)
    all_bg.update(torch.zeros_like(mask), mask)
    # Knowing the image labels: every pixel gets the first present class.
    first = int(label[0].nonzero()[0]) + 1
    label_fill.update(torch.full_like(mask, first), mask)
    # ... or a centred box of that class on background (a "saliency prior").
    pred = torch.zeros_like(mask)
    H, W = mask.shape[-2:]
    pred[:, H // 4 : 3 * H // 4, W // 4 : 3 * W // 4] = first
    label_centre.update(pred, mask)
for name, m in (("all background", all_bg), ("all pixels = first image label", label_fill),
                ("centre box = first image label", label_centre)):
    print(f"{name:<34} mIoU {100 * float(m.compute()['miou']):5.1f}")
