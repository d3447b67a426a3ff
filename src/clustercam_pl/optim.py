"""Optimiser parameter groups and the learning-rate schedule, the reference's and a corrected one.

Reference recipe (DCVL-WSSS/ClusterCAM main.py with timm 0.4.12 `create_optimizer` /
`create_scheduler`): AdamW, weight decay 0.05 on every tensor with more than one dimension
(including `cls_token` and `pos_embed`, since DataParallel hides `no_weight_decay()`), none on 1-D
tensors and biases; lr = 5e-4 * batch / 512; cosine over the epochs to lr_min = 1e-5 after a
5-epoch linear warm-up from 1e-6, stepped once per epoch *after* it. Because lr_min > lr the
"decay" rises, and the one-epoch lag makes epochs 0 and 1 both run at 1e-6.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Real
from typing import Any, ClassVar

import torch
from torch import nn

from clustercam_pl.utils.checks import check_range


@dataclass(frozen=True)
class OptimConfig:
    """AdamW + warm-up/cosine schedule.

    Attributes:
        lr_per_512: base learning rate for a global batch of 512; lr = lr_per_512 * batch / 512.
        lr: absolute base learning rate; None: derived from lr_per_512.
        weight_decay, betas, eps: AdamW.
        decay_tokens: apply weight decay to `cls_token` / `pos_embed` (the reference does).
        warmup_epochs, warmup_lr: linear warm-up from warmup_lr to lr.
        min_lr: the cosine's floor (reference 1e-5, above its own lr).
        lag_one_epoch: reproduce the reference's scheduler lag (epoch e runs at the value for e - 1).
        interval: "epoch" (reference) or "step" (the same curve evaluated at fractional epochs).
        fused: torch's fused AdamW kernel (CPU and CUDA): one kernel for all tensors instead of a
            loop of small ops per tensor; the same update up to float rounding.
    """

    lr_per_512: float = 5e-4
    lr: float | None = None
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    decay_tokens: bool = True
    warmup_epochs: float = 5
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    lag_one_epoch: bool = True
    interval: str = "epoch"
    fused: bool = True

    group: ClassVar[str] = "optim"  # the config group it is built from: messages name `optim.<field>`

    def __post_init__(self) -> None:
        g = self.group
        if self.interval not in ("epoch", "step"):
            raise ValueError(f"{g}.interval must be 'epoch' or 'step', got {self.interval!r}")
        lr, per_512 = self.lr, self.lr_per_512
        used = per_512 if lr is None else lr  # the one that sets the rate must be a positive number
        numbers = all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)
                      for v in (per_512, used))
        if not numbers or used <= 0 or per_512 < 0:
            raise ValueError(
                f"invalid learning rate: {g}.lr={_yaml(lr)}, {g}.lr_per_512={per_512!r}; valid: {g}.lr > 0 "
                f"(absolute), or {g}.lr=null to use {g}.lr_per_512 > 0 (lr = lr_per_512 * global batch / 512)"
            )
        check_range(f"{g}.weight_decay", self.weight_decay, ge=0)
        if len(self.betas) != 2:
            raise ValueError(f"{g}.betas={list(self.betas)} must be two numbers, e.g. {g}.betas=[0.9,0.999]")
        for i, beta in enumerate(self.betas):
            check_range(f"{g}.betas[{i}]", beta, ge=0, lt=1)
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))  # a YAML list is a tuple here
        check_range(f"{g}.eps", self.eps, gt=0)
        check_range(f"{g}.warmup_epochs", self.warmup_epochs, ge=0)
        check_range(f"{g}.warmup_lr", self.warmup_lr, ge=0)
        check_range(f"{g}.min_lr", self.min_lr, ge=0)

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any]) -> OptimConfig:
        """The settings a checkpoint stored (`hyper_parameters.optim`); earlier versions wrote lr=0 for unset."""
        values = dict(stored)
        if values.get("lr") == 0:
            values["lr"] = None
        return cls(**values)

    def base_lr(self, global_batch: int) -> float:
        """The learning rate at this global batch: `lr`, or `lr_per_512 * global_batch / 512`."""
        return self.lr if self.lr is not None else self.lr_per_512 * global_batch / 512


def _yaml(value: Any) -> str:
    """A value as it is written on the command line (None as null)."""
    return "null" if value is None else repr(value)


def param_groups(net: nn.Module, weight_decay: float, decay_tokens: bool = True) -> list[dict]:
    """Two named groups: `decay` (weights, >= 2-D) and `no_decay` (1-D tensors, biases, alpha)."""
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        is_token = name.endswith(("cls_token", "pos_embed"))
        if p.ndim <= 1 or name.endswith(".bias") or (is_token and not decay_tokens):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"name": "decay", "params": decay, "weight_decay": weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]


def adamw(net: nn.Module, cfg: OptimConfig, global_batch: int) -> torch.optim.AdamW:
    """AdamW over `param_groups` at the recipe's learning rate for this global batch."""
    groups = param_groups(net, cfg.weight_decay, cfg.decay_tokens)
    return torch.optim.AdamW(
        groups, lr=cfg.base_lr(global_batch), betas=tuple(cfg.betas), eps=cfg.eps, fused=cfg.fused
    )


def lr_at(epoch: float, base_lr: float, total_epochs: int, cfg: OptimConfig) -> float:
    """The learning rate for (possibly fractional) `epoch`, timm 0.4.12 CosineLRScheduler semantics."""
    t = epoch - 1 if cfg.lag_one_epoch else epoch
    if t < 0:
        return cfg.warmup_lr
    if t < cfg.warmup_epochs:
        return cfg.warmup_lr + t * (base_lr - cfg.warmup_lr) / cfg.warmup_epochs
    if t >= total_epochs:
        return cfg.min_lr
    return cfg.min_lr + 0.5 * (base_lr - cfg.min_lr) * (1 + math.cos(math.pi * t / total_epochs))
