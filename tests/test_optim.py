"""The reference learning-rate recipe, quirks included, and the parameter groups."""

from __future__ import annotations

import pytest
import torch

from clustercam_pl.optim import OptimConfig, adamw, lr_at, param_groups
from helpers import tiny_net

REF = OptimConfig()  # the reference: warm-up 5 from 1e-6, floor 1e-5, one-epoch lag


def test_reference_base_lr_for_voc_and_coco():
    assert REF.base_lr(9) == pytest.approx(8.7890625e-6)
    assert REF.base_lr(6) == pytest.approx(5.859375e-6)


@pytest.mark.parametrize(
    "epoch, expected",
    # method_reference.md 1.4: e0 1e-6, e1 1e-6, e2 2.56e-6, e3 4.12e-6, e4 5.67e-6, e5 7.23e-6, e6 8.80e-6, e79 9.998e-6
    [(0, 1e-6), (1, 1e-6), (2, 2.56e-6), (3, 4.12e-6), (4, 5.67e-6), (5, 7.23e-6), (6, 8.80e-6), (79, 9.998e-6)],
)
def test_reference_schedule_per_epoch(epoch, expected):
    assert lr_at(epoch, REF.base_lr(9), 80, REF) == pytest.approx(expected, rel=2e-3)


def test_reference_schedule_rises_after_warmup_and_corrected_one_decays():
    base = REF.base_lr(9)
    ref = [lr_at(e, base, 80, REF) for e in range(6, 80)]
    assert all(b >= a for a, b in zip(ref, ref[1:], strict=False))  # the quirk: lr_min > lr
    fixed = OptimConfig(min_lr=base / 100, warmup_lr=base / 100, lag_one_epoch=False)
    dec = [lr_at(e, base, 80, fixed) for e in range(5, 80)]
    assert all(b <= a for a, b in zip(dec, dec[1:], strict=False))
    assert dec[-1] < base / 10


def test_param_groups_follow_the_reference_rule():
    net = tiny_net(3)
    names = {id(p): n for n, p in net.named_parameters()}
    groups = {g["name"]: {names[id(p)] for p in g["params"]} for g in param_groups(net, 0.05)}
    assert "backbone.cls_token" in groups["decay"] and "backbone.pos_embed" in groups["decay"]
    assert "backbone.blocks.0.st_attn.mix_param" in groups["no_decay"]
    assert "backbone.blocks.0.st_attn.ln_pat.weight" in groups["no_decay"]
    assert "head.bias" in groups["no_decay"] and "head.weight" in groups["decay"]
    assert groups["decay"] | groups["no_decay"] == set(names.values())
    no_tok = {g["name"]: {names[id(p)] for p in g["params"]} for g in param_groups(net, 0.05, decay_tokens=False)}
    assert "backbone.cls_token" in no_tok["no_decay"]


def test_invalid_optim_config():
    with pytest.raises(ValueError, match="interval"):
        OptimConfig(interval="batch")


def test_fused_adamw_takes_the_loop_implementations_steps():
    """`optim.fused` changes the kernel, not the update: three steps on the same gradients agree to fp32 rounding."""
    nets = [tiny_net(3, alpha_init=0.5) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [adamw(nets[0], OptimConfig(lr=1e-2), 4), adamw(nets[1], OptimConfig(lr=1e-2, fused=False), 4)]
    assert opts[0].defaults["fused"] and not opts[1].defaults["fused"]
    before = [p.detach().clone() for p in nets[0].parameters()]
    for _ in range(3):
        grads = [torch.randn_like(p) for p in before]
        for net, opt in zip(nets, opts, strict=True):
            for p, g in zip(net.parameters(), grads, strict=True):
                p.grad = g.clone()
            opt.step()
    for a, b, p0 in zip(nets[0].parameters(), nets[1].parameters(), before, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        assert not torch.equal(a, p0)  # every tensor moved (decay and no-decay groups)


def test_an_unset_learning_rate_is_null_and_old_checkpoints_zero_reads_as_unset():
    assert OptimConfig().lr is None and OptimConfig(lr=2e-3).base_lr(9) == 2e-3
    # Checkpoints of earlier versions stored lr=0.0 for "derive it".
    stored = {k: v for k, v in vars(OptimConfig()).items()} | {"lr": 0.0}
    assert OptimConfig.from_stored(stored) == OptimConfig()
    with pytest.raises(ValueError, match=r"optim\.lr=0, .*or optim\.lr=null to use optim\.lr_per_512 > 0"):
        OptimConfig(lr=0)
