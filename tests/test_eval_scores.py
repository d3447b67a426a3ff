"""Two-phase evaluation: scores saved at reduced resolution, then re-scored without the network,
equal to scoring the network's probabilities brought to that resolution and back."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from clustercam_pl.checkpoint import load_checkpoint
from clustercam_pl.eval import evaluate
from clustercam_pl.inference.protocol import Protocol, network_crops
from clustercam_pl.inference.scores import expand_scores, reduce_scores, round_trip
from clustercam_pl.metrics import confusion_matrix, iou_from_confmat
from helpers import compose_eval, save_framework_checkpoint, tiny_net

DATA = ["data=synthetic", "data.synthetic.image_size=64", "data.synthetic.num_train=2",
        "data.synthetic.num_val=4", "data.val_batch_size=2", "device=cpu", "crf_workers=0", "progress=false"]


def test_round_trip_keeps_probabilities():
    probs = torch.softmax(torch.randn(5, 30, 44), 0)  # (C, h, w)
    small = reduce_scores(probs, 4)
    assert small.shape == (5, 8, 11) and str(small.dtype) == "float16"
    back = expand_scores(small, (30, 44))
    assert back.shape == (5, 30, 44) and torch.allclose(back.sum(0), torch.ones(30, 44), atol=1e-5)
    assert torch.equal(round_trip(probs, 1), expand_scores(reduce_scores(probs, 1), (30, 44)))
    with pytest.raises(ValueError, match=r"score_downscale=0 must be a whole number >= 1"):
        reduce_scores(probs, 0)


def test_rescoring_from_saved_scores_equals_the_network_at_the_saved_resolution(tmp_path):
    torch.manual_seed(0)
    ckpt = save_framework_checkpoint(tiny_net(4, decoder_width=16).eval(), tmp_path / "last.ckpt")
    saved = evaluate(compose_eval([*DATA, f"ckpt_path={ckpt}", "eval=ss", "save_scores=true",
                                   "score_downscale=4"], tmp_path / "phase1"))
    assert len(list((tmp_path / "phase1" / "scores").glob("*.npz"))) == 4
    again = evaluate(compose_eval([*DATA, f"ckpt_path={ckpt}", "eval=ss", f"scores_from={tmp_path / 'phase1'}"],
                                  tmp_path / "phase2"))

    # By hand: the network's probabilities, reduced to 1/4 and brought back, argmax, against the masks.
    cfg = compose_eval(DATA)
    dm = instantiate(cfg.data, _convert_="all", num_workers=0)
    net = load_checkpoint(ckpt).net.eval()
    ss = Protocol.from_values("ss", [1.0], False, [])
    confmat = torch.zeros(5, 5, dtype=torch.long)
    for batch in dm.eval_loader("val"):
        for (_, probs), mask in zip(network_crops(net, batch["image"], None, ss), batch["mask"], strict=True):
            confmat += confusion_matrix(round_trip(probs, 4).argmax(0), mask, 5)
    miou, per_class = iou_from_confmat(confmat)
    assert again["miou"] == pytest.approx(float(miou), abs=1e-7)
    assert list(again["per_class_iou"].values()) == pytest.approx([float(v) for v in per_class], abs=1e-7, nan_ok=True)
    assert saved["miou"] is not None  # phase 1 scores at full resolution

    with pytest.raises(ValueError, match=r"was made with another protocol scales \(saved \[1\.0\], now "
                                         r"\[0\.5, 0\.75, 1\.0, 1\.25, 1\.5\]\): pass the same checkpoint"):
        evaluate(compose_eval([*DATA, f"ckpt_path={ckpt}", "eval=ms", f"scores_from={tmp_path / 'phase1'}"],
                              tmp_path / "phase3"))
