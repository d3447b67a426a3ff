"""Histopathology end to end: a LUAD-HistoSeg stand-in in the release's format (tags in the file names,
palette masks with void 4) is prepared, trained a few steps with the tiny net (no background class),
evaluated on test and predicted on its val patches, as the README's "Histopathology" section runs it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from wsss_fakes import make_histo_release

from clustercam_pl.checkpoint import load_checkpoint
from clustercam_pl.data.labels import IGNORE_INDEX, LUAD_CLASSES
from clustercam_pl.prepare import main as prepare
from helpers import TINY_NET_OVERRIDES, compose_config, compose_train

SMALL = [
    *TINY_NET_OVERRIDES,
    "model.pretrained=null", "model.seg_start_epoch=1", "trainer=cpu", "trainer.precision=32-true",
    "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=none",
    "data.num_workers=0", "data.pin_memory=false", "data.crop_size=64", "data.global_batch_size=4",
    "data.val_batch_size=2", "cam.par_iters=2",
]


@pytest.mark.slow
def test_luad_prepare_train_eval_predict(tmp_path: Path) -> None:
    from clustercam_pl.eval import evaluate
    from clustercam_pl.predict import run_predict
    from clustercam_pl.train import train

    raw = make_histo_release(tmp_path / "LUAD-HistoSeg", "luad", size=64)
    root = tmp_path / "data" / "luad"
    prepare(raw.argv(root))

    summary = train(compose_train(["+experiment=luad_vits", *SMALL, f"data.data_root={root}"],
                                  output_dir=tmp_path / "train"))
    assert summary["global_step"] == 4  # 8 patches / 4 a step, 2 epochs (the seg loss on in the second)
    assert list(summary["per_class_iou"]) == list(LUAD_CLASSES)  # 4 classes, no "background"
    assert 0.0 <= summary["val/seg_miou"] <= 1.0 and 0.0 <= summary["val/pseudo_miou"] <= 1.0
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    net = load_checkpoint(ckpt).net
    assert net.cfg.background is False and net.cfg.num_classes == 4

    result = evaluate(compose_config("eval", ["data=luad", f"data.data_root={root}", "split=test", "eval=ss",
                                        "device=cpu", f"ckpt_path={ckpt}"], tmp_path / "eval"))
    assert list(result["per_class_iou"]) == list(LUAD_CLASSES) and 0.0 <= result["miou"] <= 1.0

    inputs = raw.root / "val" / "img"  # the val patches as files on disk, as a user would predict them
    run_predict(compose_config("predict", ["device=cpu", "progress=false", f"ckpt_path={ckpt}", f"input={inputs}",
                                     f"out_dir={tmp_path / 'pred'}"], tmp_path / "pred_run"))
    records = [json.loads(line) for line in (tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["input"].rsplit("/", 1)[-1] for r in records) == sorted(p.name for p in inputs.iterdir())
    for r in records:
        assert set(r["scores"]) == set(LUAD_CLASSES)
        assert sum(r["pixel_fraction"].values()) == pytest.approx(1.0, abs=1e-4)  # every pixel is a tissue class
        mask = np.array(Image.open(tmp_path / "pred" / f"{r['output']}.png"))
        assert mask.shape == (64, 64) and mask.max() < 4 and not (mask == IGNORE_INDEX).any()
