"""Small helpers on `nn.Module`s shared by training, CAMs, inference and figures."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def training_mode(module: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Run a block with `module.train(training)`, then restore the mode it had (also on errors)."""
    was_training = module.training
    module.train(training)
    try:
        yield module
    finally:
        module.train(was_training)
