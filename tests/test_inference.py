"""clustercam_pl.inference: the one prediction / scoring path of validation, eval and export, and the one
path from a batch to label maps through the post-processing steps (`protocol.label_maps`).

In-training validation and `eval=ss` give the same number for any `val_batch_size`: padded images are
predicted at their own size (the padding never reaches the network, the CAM normalisation or PAR).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from clustercam_pl.cam.config import CAMConfig
from clustercam_pl.checkpoint import LoadedCheckpoint
from clustercam_pl.data.datamodule import pad_collate
from clustercam_pl.inference.crf import dense_crf, to_uint8_image
from clustercam_pl.inference.network import cam_prediction, predict, scored_pseudo_label
from clustercam_pl.inference.pool import StepPool
from clustercam_pl.inference.protocol import Protocol, label_maps
from clustercam_pl.inference.steps import build_step
from clustercam_pl.lit_module import ClusterCAMLitModule
from clustercam_pl.losses import LossConfig
from clustercam_pl.optim import OptimConfig
from clustercam_pl.tasks.evaluate import evaluate_network
from helpers import tiny_net

CAM = CAMConfig(cam_layers=2, par_iters=2, par_dilations=(1, 2))


def _items() -> list[dict]:
    g = torch.Generator().manual_seed(0)
    sizes = [(64, 96), (80, 64), (64, 64)]
    return [{"image": torch.randn(3, h, w, generator=g), "cls_label": torch.tensor([1.0, 0.0, float(i % 2)]),
             "mask": torch.randint(0, 4, (h, w), generator=g), "image_id": f"im{i}"} for i, (h, w) in enumerate(sizes)]


def _validate(batches: list[dict]) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    module = ClusterCAMLitModule(tiny_net(3), CAM, LossConfig(), OptimConfig()).eval()
    for i, batch in enumerate(batches):
        module.validation_step(batch, i)
    return {"seg": module.val_seg.confmat.clone(), "pseudo": module.val_pseudo.confmat.clone(),
            "cam": module.val_cam.confmat.clone(), "map": module.val_map.compute()}


def test_padded_validation_batches_score_as_single_images():
    items = _items()
    padded = _validate([pad_collate(items)])  # one batch of 3, padded to 80x96
    single = _validate([pad_collate([it]) for it in items])
    for key in ("seg", "pseudo", "cam"):
        assert torch.equal(padded[key], single[key]), key
    torch.testing.assert_close(padded["map"], single["map"])


def test_in_training_validation_equals_eval_ss_with_padded_batches():
    items = _items()
    val = _validate([pad_collate(items[:2]), pad_collate(items[2:])])
    torch.manual_seed(1)
    net = tiny_net(3).eval()
    loader = DataLoader(items, batch_size=1, collate_fn=pad_collate)
    ss = Protocol.from_values("ss", [1.0], False, None)
    result = evaluate_network(LoadedCheckpoint(net, "x", "framework", None, None), loader, ss,
                              torch.device("cpu"), has_masks=True)
    cm = val["seg"].double()
    tp = cm.diagonal()
    per_class = tp / (cm.sum(0) + cm.sum(1) - tp)
    assert result["miou"] == pytest.approx(float(per_class.nanmean()), abs=1e-7)


def test_predict_pads_with_background_and_reports_class_scores():
    items = _items()
    net = tiny_net(3).eval()
    batch = pad_collate(items[:2])
    pred = predict(net, batch["image"], image_size=batch["image_size"])
    assert pred.probs.shape == (2, 4, 80, 96) and pred.cls_logits.shape == (2, 3)
    assert (pred.probs[0, :, 64:] == 0).all() and (pred.probs[1, :, :, 64:] == 0).all()
    alone = predict(net, items[1]["image"][None])
    torch.testing.assert_close(pred.probs[1, :, :80, :64], alone.probs[0], rtol=0, atol=0)
    torch.testing.assert_close(pred.cls_logits[1], alone.cls_logits[0], rtol=0, atol=0)


def test_scoring_rules():
    pseudo = torch.tensor([[0, 1, 255, 2]])
    assert scored_pseudo_label(pseudo, 255).tolist() == [[0, 1, 0, 2]]  # the ignore band counts as background
    cams = torch.tensor([[[0.2, 0.6]], [[0.5, 0.1]]]).view(2, 1, 2)  # (K=2, H=1, W=2)
    assert cam_prediction(cams, 0.4).tolist() == [[2, 1]]  # 0.5 beats 0.4 (class 2); 0.6 (class 1)
    assert cam_prediction(cams, 0.7).tolist() == [[0, 0]]


def test_label_maps_of_a_padded_batch_through_the_steps():
    """label_maps: each image at its own size; no steps = the argmax of the network's probabilities;
    the crf step = dense_crf on the image's own pixels; the same in a worker pool as inline."""
    pytest.importorskip("pydensecrf.densecrf", reason="optional dependency pydensecrf2 is not installed")
    items = _items()
    batch = pad_collate(items)
    torch.manual_seed(1)
    net = tiny_net(3).eval()
    plain = label_maps(net, batch["image"], batch["image_size"], Protocol.from_values("ss", [1.0], False))
    crf = Protocol.from_values("ss_crf", [1.0], False, [{"name": "crf", "n_iter": 3}])
    refined = label_maps(net, batch["image"], batch["image_size"], crf)
    with StepPool(crf.steps, 1) as pool:
        pooled = label_maps(net, batch["image"], batch["image_size"], crf, pool)
    changed = 0
    for item, a, b, c in zip(items, plain, refined, pooled, strict=True):
        with torch.no_grad():
            probs = predict(net, item["image"][None], (1.0,), False).probs[0]  # (C, h, w), alone
        assert a.dtype == np.uint8 and a.shape == item["image"].shape[-2:]
        np.testing.assert_array_equal(a, probs.argmax(0).numpy())
        expected = dense_crf(to_uint8_image(item["image"]), probs.numpy(), crf.steps[0]).argmax(0)
        np.testing.assert_array_equal(b, expected)
        np.testing.assert_array_equal(c, b)
        changed += int((b != a).any())
    assert changed  # the CRF changed something: the comparison can fail


def test_protocol_round_trips_through_its_record_and_refuses_unknown_steps():
    p = Protocol.from_values("ms_crf", [0.5, 1.0], False, [{"name": "crf", "n_iter": 5}])
    assert Protocol.from_values(**p.as_dict()) == p
    assert p.steps == (build_step({"name": "crf", "n_iter": 5}),)
    assert "dense CRF (Gaussian sxy 4 compat 3, bilateral sxy 83 srgb 5 compat 3, 5 iterations)" in p.describe()
    with pytest.raises(ValueError, match=r"^postprocess step name='sharpen' is unknown; available: .*crf"):
        Protocol.from_values("x", [1.0], False, [{"name": "sharpen"}])
    with pytest.raises(ValueError, match=r"^postprocess step crf: unknown key\(s\) \['iters'\]; allowed: "):
        Protocol.from_values("x", [1.0], False, [{"name": "crf", "iters": 5}])

