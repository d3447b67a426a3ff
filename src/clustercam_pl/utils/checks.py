"""Range checks of numeric settings: one message format that names the full config key and the range.

The settings objects (``OptimConfig``, ``WSSSDataModule``, ``SyntheticConfig``, ``LossConfig``)
know the config group they are built from and pass ``<group>.<field>`` here, so a bad value on the
command line is reported as the override to fix, e.g. ``optim.weight_decay=-0.1 is out of range:
must be >= 0``.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any


def describe_range(
    gt: float | None = None, ge: float | None = None, lt: float | None = None, le: float | None = None
) -> str:
    """The valid range in words: ``> 0``, ``>= 1``, ``in [0, 1)``; empty without bounds."""
    low = f"({gt}" if gt is not None else f"[{ge}" if ge is not None else None
    high = f"{lt})" if lt is not None else f"{le}]" if le is not None else None
    if low and high:
        return f"in {low}, {high}"
    if low:
        return f"> {gt}" if gt is not None else f">= {ge}"
    if high:
        return f"< {lt}" if lt is not None else f"<= {le}"
    return ""


def check_range(
    key: str,
    value: Any,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    integer: bool = False,
) -> None:
    """Raise ValueError ``<key>=<value> is out of range: must be <range>`` unless ``value`` lies in it.

    ``key`` is the full config key (``optim.lr``, ``data.num_workers``). Booleans, strings, NaN and
    infinities are refused too; ``integer`` also refuses floats (a batch of 2.5 images).
    """
    valid = describe_range(gt, ge, lt, le)
    kind = "an integer" if integer else "a finite number"
    is_number = isinstance(value, Integral if integer else Real) and not isinstance(value, bool)
    if not is_number or not math.isfinite(float(value)):
        raise ValueError(f"{key}={value!r} is not valid: must be {kind} {valid}".rstrip())
    v = float(value)
    ok = (
        (gt is None or v > gt)
        and (ge is None or v >= ge)
        and (lt is None or v < lt)
        and (le is None or v <= le)
    )
    if not ok:
        raise ValueError(f"{key}={value!r} is out of range: must be {valid}")
